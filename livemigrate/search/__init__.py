"""Search index sync: the destination table's stream -> an Elasticsearch index behind an alias.

Modules: ``sink`` (the RecordSink and the version rule), ``backend`` (the SearchBackend
interface and its elasticsearch-py implementation), ``documents`` (ids, default document, user
hook), ``batcher`` (bulk limits), ``targets`` (which indices the sink writes, in the control
table), ``resync`` (rebuild from a scan, alias swap, cleanup), ``indices`` (names and the
``--index-config`` file), ``cli`` (``livemigrate search ...``).
"""
