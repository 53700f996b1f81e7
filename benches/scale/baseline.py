#!/usr/bin/env python3
"""The baseline kiln's provisioning is compared with (issue 31): five VMs of a 3+2 cluster made the
way the original provisioning scripts make them, with proxmoxer (benches/requirements.txt): for each
VM a full clone of the template, wait for the task, one config write, grow the boot disk, start, wait.

    baseline.py --port P --ca CA.pem --token 'kiln@pve!bench' --secret S

Runs that sequence twice against the same fakepve: one VM after another ("serial", waiting on each
task as proxmoxer does by default), then five threads at once, one per VM, polling every 100 ms
("parallel": the floor for any client, as each VM's tasks are sequential). Prints {"serial": seconds, "parallel": seconds}.
"""

import argparse
import json
import os
import threading
import time

from proxmoxer import ProxmoxAPI
from proxmoxer.tools import Tasks

NODE = 'pve1'
TEMPLATE = 9000
# The five VMs of the bench's 3+2 cluster (benches/scale/fixture.rs): cores, memory MiB, disk GiB.
VMS = [('cp', 1, 2, 4096, 20), ('cp', 2, 2, 4096, 20), ('cp', 3, 2, 4096, 20),
       ('wk', 4, 4, 8192, 40), ('wk', 5, 4, 8192, 40)]
# A script waits on each task as proxmoxer's Tasks.blocking_status does by default (every second,
# proxmoxer/tools/tasks.py); the parallel floor polls ten times as often, so it is a true floor.
SCRIPT_POLLING = 1.0
LIMIT_POLLING = 0.1


def wait(api, upid, polling):
    status = Tasks.blocking_status(api, upid, timeout=600, polling_interval=polling)
    if status.get('exitstatus') != 'OK':
        raise RuntimeError('task {0} ended {1}'.format(upid, status.get('exitstatus')))


def make_vm(api, polling, prefix, role, n, cores, memory, disk):
    vmid = int('{0}{1}'.format(prefix, n))
    name = 'base{0}-{1}-{2}'.format(prefix, role, n)
    node = api.nodes(NODE)
    wait(api, node.qemu(TEMPLATE).clone.post(newid=vmid, name=name, full=1, storage='local-lvm'), polling)
    node.qemu(vmid).config.put(
        cores=cores, memory=memory, cpu='host', balloon=0,
        net0='virtio,bridge=vmbr0', ipconfig0='ip=10.99.{0}.{1}/24,gw=10.99.{0}.254'.format(prefix % 256, 10 + n),
        nameserver='10.99.{0}.254'.format(prefix % 256), onboot=1, boot='order=scsi0',
        tags='baseline', description='made by the baseline script')
    wait(api, node.qemu(vmid).resize.put(disk='scsi0', size='{0}G'.format(disk)), polling)
    wait(api, node.qemu(vmid).status.start.post(), polling)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--port', type=int, required=True)
    ap.add_argument('--ca', required=True)
    ap.add_argument('--token', required=True)
    ap.add_argument('--secret', required=True)
    args = ap.parse_args()
    user, _, token_name = args.token.partition('!')
    # proxmoxer passes verify_ssl on as a flag; requests takes the CA from its environment then.
    os.environ['REQUESTS_CA_BUNDLE'] = args.ca
    api = ProxmoxAPI('127.0.0.1', port=args.port, user=user, token_name=token_name,
                     token_value=args.secret, verify_ssl=True, timeout=60)

    t0 = time.monotonic()
    for vm in VMS:
        make_vm(api, SCRIPT_POLLING, 801, *vm)
    serial = time.monotonic() - t0

    errors = []

    def one(vm):
        try:
            # A client per thread: requests' sessions are not shared between threads.
            own = ProxmoxAPI('127.0.0.1', port=args.port, user=user, token_name=token_name,
                             token_value=args.secret, verify_ssl=True, timeout=60)
            make_vm(own, LIMIT_POLLING, 802, *vm)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=one, args=(vm,)) for vm in VMS]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    parallel = time.monotonic() - t0
    if errors:
        raise SystemExit('parallel run failed: {0}'.format(errors))
    print(json.dumps({'serial': serial, 'parallel': parallel}))


if __name__ == '__main__':
    main()
