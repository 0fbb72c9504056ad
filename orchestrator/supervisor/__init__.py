"""The project's supervisor: a service per project that watches its VMs (QMP events, unit
states), writes what they do to the event log and applies their restart policies."""
