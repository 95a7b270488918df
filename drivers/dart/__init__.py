"""Wayne/Dresser DART (RS-485): codec in ``codec``, master-mode poller in ``poller``."""
