"""What a VM is made of, and how to reach what runs in it.

Images (cache, pull), disks and volumes, cloud-init documents and the seed ISO, mounts, the
accelerator choice and the QEMU command line (pure, golden-tested); the project's SSH key,
console password and known hosts; SSH probes, the serial console and logs.
"""
