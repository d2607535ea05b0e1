"""The composition root and client tools: the CLI, the local cluster, model import and
tracing, bulk jobs. They import gateway/, workers/ and shared/; nothing imports them."""
