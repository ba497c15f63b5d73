"""Test harness for process tests: a fault-injecting loopback relay and a process helper.

This kernel has no ``netem`` qdisc, so faults between real daemons are injected in user
space (``relay``, toxiproxy style); ``procs`` starts daemons and kills them by PID.
"""
