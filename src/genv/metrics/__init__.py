"""Seeing the machine: usage and enforcement as Prometheus metrics, and what ``genv top`` shows.

- ``usage``: the usage view of one host (pure);
- ``source``: where host samples come from (``LocalSource`` reads this machine;
  ``cluster.ClusterSource`` one sample per host, for ``genv remote monitor`` and ``top``,
  from ``host_agent`` on each host, its view on the wire as ``usage_wire`` says);
- ``families``: the usage metrics, genv 1.4.3's and ours; ``exporter`` and ``http`` serve them;
- ``enforcement``: the daemon's own metrics, a sink of its events;
- ``scrape``: reading a metrics endpoint back (``genv top --enforcer``);
- ``config_files`` and ``dashboards``: Prometheus configuration and Grafana provisioning.
"""
