"""The aiohttp gateway: Elasticsearch's trained-model REST API over Redis queues."""
