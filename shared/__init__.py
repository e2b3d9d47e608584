"""What the gateway and the ingester share: settings groups, the record contract, stream names,
the codec and the error tree.

No I/O and no framework imports live here, so the ingester never loads Litestar and the
gateway never loads clickhouse-driver.
"""
