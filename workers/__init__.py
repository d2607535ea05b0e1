"""Worker nodes: load models once per node and serve allocations from Redis queues."""
