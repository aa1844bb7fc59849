"""fastbp's asv suites: kernels, training, memory, coldstart (see asv.conf.json)."""
