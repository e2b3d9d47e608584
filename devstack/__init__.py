"""The local stack and the test harness: real Redis and ClickHouse servers from Debian's
packages in private directories on free ports, the fake LLM providers, and the process that
starts the whole stack. Never imported by the gateway or the ingester."""
