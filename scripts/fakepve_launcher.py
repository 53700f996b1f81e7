#!/usr/bin/env python3
"""Start the pinned fakepve for kiln's Proxmox tests, with what fakepve 0.5.0 does not model.

Usage (the Rust tests do this; see tests/adapters/proxmox/support.rs):

    .venv/bin/python scripts/fakepve_launcher.py --cert C --key K --token 'kiln@pve!ci=SECRET'

It listens on 127.0.0.1 on a free port and prints one line `READY <port>` on stdout. After that,
stdin is a command channel: one JSON object per line, `{"cmd": NAME, ...}`, each answered by one JSON
line on stdout: `{"ok": RESULT}` or `{"error": MESSAGE}`. Closing stdin stops the server, so a test
that dies takes its fake with it.

Added to fakepve:
- `PUT /nodes/{node}/qemu/{vmid}/resize` (DESIGN.md §9): grows the drive's `size=` in a task. As in
  qemu-server's `resize_vm`, its checks (digest, lock, disk, "shrinking disks is not supported") run
  inside the task, which fails with the message; the PUT answers a UPID.
- Lost replies (`lost_reply`): the matched request runs to completion, then the connection is closed
  without an answer: what a real PVE does to a client whose network fails at the wrong moment. Only a
  request that succeeded (2xx) uses up the rule, so it combines with `fail` on the same path: the
  failures come first, and the first clone that really runs loses its reply.
- `faults`: what is left of the injected failures and lost replies, and how many requests the lossy
  network dropped, so a test can prove each fault it set up really happened.
- Task outcomes (`task_warnings`): the matched request's task ends `WARNINGS: n`, as PVE reports a
  task that logged warnings.
- `GET /cluster/options` from a stored datacenter.cfg (`datacenter_options`; empty by default, as a
  fresh datacenter has no `user-tag-access` or `registered-tags`). pve-manager
  `PVE/API2/Cluster.pm` `get_options` returns datacenter.cfg as parsed (`user-tag-access` a hash,
  `registered-tags` a list: pve-guest-common `src/PVE/GuestHelpers.pm` `get_allowed_tags` reads them
  so). fakepve's schema check still answers 403 without `Sys.Audit` on `/` (DESIGN.md §9).
- `request_times`: the wall-clock arrival time of each entry of `requests`, so a test can order a
  request against another process's timestamped log (the Talos simulator's).
- Task durations by task type (`--task-secs qmclone=40`, PVE seconds, scaled by `--time-scale`):
  fakepve 0.5.0 times a QEMU start only per VM (`start_secs`) and a clone not at all. The pause runs
  first in the task's body, while the task shows `running`, as a real full clone copies the disk
  (qemu-server `PVE/API2/Qemu.pm` `clone_vm`: the copy runs inside the `qmclone` worker). Used by the
  scale bench (benches/scale.rs).
- `acl`: replaces one user's (or token's) ACL, so a test can take a single privilege away.
- `add_token` / `request_log`: another API token, and (method, path, time, token id) of each request, so a
  test running several kiln instances (each with its own token) reads who sent what.
- Someone else's edit (`meddle`): right after the matched read (`GET …/config`) or write (`PUT …/config`)
  of a VM succeeds, config keys are set as another user would, moving the digest (`{n}` in a value
  counts the edits). qemu-server then refuses a write carrying the old digest with "checksum mismatch
  (file change by other user?)": a config write over HTTP (fakepve's own check, update_vm_api), a
  resize in its task (resize_vm; src/PVE/API2/Qemu.pm, qemu-server 9.2.6).
"""

import argparse
import asyncio
import json
import re
import sys
import time

from aiohttp import web

from fakepve.model import PveError, TaskError
from fakepve.server import FakePve

GIB = 1024 ** 3
UNITS = {'K': 1024, 'M': 1024 ** 2, 'G': GIB, 'T': 1024 ** 4}


def parse_size(text, default_unit):
    # A drive's size= without a unit is GiB (as fakepve reads it); resize's size= is bytes (PVE).
    m = re.fullmatch(r'(\d+(?:\.\d+)?)([KMGT])?', text)
    if not m:
        raise PveError(400, 'Parameter verification failed.', {'size': 'invalid size'})
    unit = m.group(2) or default_unit
    return int(float(m.group(1)) * (UNITS[unit] if unit else 1))


def format_size(nbytes):
    for unit in ('T', 'G', 'M', 'K'):
        if nbytes % UNITS[unit] == 0:
            return '{0}{1}'.format(nbytes // UNITS[unit], unit)
    return str(nbytes)


class KilnPve(FakePve):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # (method, path suffix) -> remaining count
        self.lost_replies = {}
        self.task_warnings = {}
        # Requests the lossy network (flaky_network) dropped: fakepve does not record them.
        self.dropped = 0
        self.datacenter = {}
        # (vmid, 'read' | 'write') -> {'times': n, 'set': {key: value}}
        self.meddling = {}
        # Wall-clock arrival time of each entry of self.requests, so a test can order a request
        # against another process's timestamped log (the Talos simulator's).
        self.request_times = []
        # The API token id each entry of self.requests came with, so a test running several kiln
        # instances (each with its own token) can tell who sent what.
        self.request_tokens = []
        # Task type -> PVE seconds every task of that type takes (--task-secs).
        self.task_secs = {}

    async def task(self, node, ttype, tid, user, body, **kwargs):
        secs = self.task_secs.get(ttype)
        if secs:
            inner = body

            async def body():
                await self.pause(secs)
                return await inner()
        return await super().task(node, ttype, tid, user, body, **kwargs)

    def _record(self, request, body):
        super()._record(request, body)
        self.request_times.append(time.time())
        del self.request_times[:len(self.request_times) - len(self.requests)]
        auth = request.headers.get('Authorization', '')
        token = auth[len('PVEAPIToken='):].partition('=')[0] if auth.startswith('PVEAPIToken=') else ''
        self.request_tokens.append(token)
        del self.request_tokens[:len(self.request_tokens) - len(self.requests)]

    def _routes_kiln_options(self):
        return [('GET', '/cluster/options', self._kiln_options)]

    async def _kiln_options(self, v, user):
        return dict(self.datacenter)

    def _routes_kiln_resize(self):
        return [('PUT', '/nodes/{node}/qemu/{vmid}/resize', self._kiln_resize)]

    async def _kiln_resize(self, v, user):
        vm = self.find(v['node'], v['vmid'])
        self.need_quorum()
        self.require(user, '/vms/{0}'.format(vm.vmid), 'VM.Config.Disk')
        disk = v['disk']
        size = str(v['size'])

        # qemu-server src/PVE/API2/Qemu.pm resize_vm (9.2.6): every check is in $updatefn, which the
        # worker runs under lock_config, so a stale digest, a lock, a missing disk and a shrink fail
        # the task (TASK ERROR: <message>) while the PUT answers its UPID.
        async def body():
            if v.get('digest') and v['digest'] != vm.digest():
                raise TaskError('checksum mismatch (file change by other user?)')
            if vm.lock:
                raise TaskError('VM is locked ({0})'.format(vm.lock))
            drive = vm.config.get(disk)
            if drive is None:
                raise TaskError('disk \'{0}\' does not exist'.format(disk))
            m = re.search(r'size=(\d+(?:\.\d+)?[KMGT]?)', drive)
            current = parse_size(m.group(1), 'G') if m else 0
            if size.startswith('+'):
                new = current + parse_size(size[1:], None)
            else:
                new = parse_size(size, None)
            if new < current:
                raise TaskError('shrinking disks is not supported')
            if m:
                drive = drive.replace('size=' + m.group(1), 'size=' + format_size(new))
            else:
                drive = drive + ',size=' + format_size(new)
            vm.config[disk] = drive
            return 'Image resized.'
        return await self.task(vm.node, 'resize', vm.vmid, user, body, vm=vm)

    def _build_app(self):
        app = super()._build_app()
        app.middlewares.insert(0, self._kiln_faults)
        return app

    @staticmethod
    def _take(rules, request):
        for key, left in list(rules.items()):
            if request.method == key[0] and request.path.endswith(key[1]):
                if left <= 1:
                    del rules[key]
                else:
                    rules[key] = left - 1
                return True
        return False

    @staticmethod
    def _matches(rules, request):
        return any(request.method == m and request.path.endswith(s) for m, s in rules)

    @web.middleware
    async def _kiln_faults(self, request, handler):
        lost = self._matches(self.lost_replies, request)
        warn = self._take(self.task_warnings, request)
        try:
            response = await handler(request)
        except ConnectionResetError:
            self.dropped += 1
            raise
        # A failed or dropped request does not use up a lost-reply rule: losing the answer of a request
        # that did nothing is no different from a failure, and tests want the run-then-lose case.
        lost = lost and isinstance(response, web.Response) and 200 <= response.status < 300 \
            and self._take(self.lost_replies, request)
        if warn and isinstance(response, web.Response) and response.status == 200:
            upid = json.loads(response.text).get('data')
            task = self.tasks.get(upid)
            if task is not None:
                # Wait for the task (time_scale > 0), then report what PVE reports for logged warnings.
                while task['status'] == 'running':
                    await asyncio.sleep(0.01)
                task['log'].insert(-1, 'WARN: kiln-test: a warning the task logged')
                task['log'][-1] = 'TASK WARNINGS: 1'
                task['exitstatus'] = 'WARNINGS: 1'
        if isinstance(response, web.Response) and 200 <= response.status < 300:
            self._meddle(request)
        if lost:
            # The request ran; its answer never arrives.
            request.transport.close()
            raise ConnectionResetError('kiln launcher: reply lost')
        return response


    def _meddle(self, request):
        m = re.search(r'/qemu/(\d+)/config$', request.path)
        when = {'GET': 'read', 'PUT': 'write', 'POST': 'write'}.get(request.method)
        rule = m and when and self.meddling.get((int(m.group(1)), when))
        if not rule:
            return
        vm = self.vm(int(m.group(1)))
        if vm is None:
            return
        rule['times'] -= 1
        rule['n'] += 1
        if rule['times'] <= 0:
            del self.meddling[(vm.vmid, when)]
        # `{n}` in a value counts the edits, so repeated edits keep moving the digest.
        vm.config.update((k, v.replace('{n}', str(rule['n'])) if isinstance(v, str) else v)
                         for k, v in rule['set'].items())


def vm_view(pve, vmid):
    vm = pve.vm(vmid)
    if vm is None:
        return None
    return {'vmid': vm.vmid, 'name': vm.name, 'node': vm.node, 'status': vm.status, 'lock': vm.lock,
            'template': vm.template, 'config': vm.config, 'pending': vm.pending, 'digest': vm.digest()}


async def command(pve, c):
    name = c['cmd']
    if name == 'requests':
        return [[m, p, b.decode('utf-8', 'replace')] for m, p, b in pve.requests]
    if name == 'request_times':
        return pve.request_times
    if name == 'request_log':
        # One answer, so the three lists are read at the same moment.
        return [[m, p, t, tok] for (m, p, _), t, tok in zip(pve.requests, pve.request_times, pve.request_tokens)]
    if name == 'add_token':
        pve.apitokens[c['tokenid']] = c['secret']
        return True
    if name == 'clear_requests':
        pve.requests.clear()
        pve.request_times.clear()
        pve.request_tokens.clear()
        return True
    if name == 'vm':
        return vm_view(pve, c['vmid'])
    if name == 'vmids':
        return sorted(vm.vmid for vm in pve.vms)
    if name == 'add_vm':
        vm = pve.add_vm(c['vmid'], c['name'], node=c.get('node', 'pve1'), status=c.get('status', 'stopped'),
                        config=c.get('config', {}), template=c.get('template', False))
        return vm.vmid
    if name == 'add_vms':
        # Many VMs at once (the observation-cost test): [{vmid, name, node, status, tags}]
        # A spec's own 'config' (what kiln would have written: the scale bench) replaces the default.
        for spec in c['vms']:
            if 'config' in spec:
                pve.add_vm(spec['vmid'], spec['name'], node=spec.get('node', 'pve1'),
                           status=spec.get('status', 'stopped'), config=dict(spec['config']))
                continue
            config = {'cores': 2, 'memory': 2048, 'scsi0': 'local-lvm:vm-{0}-disk-0,size=32G'.format(spec['vmid'])}
            if spec.get('tags'):
                config['tags'] = spec['tags']
            if spec.get('description'):
                config['description'] = spec['description']
            pve.add_vm(spec['vmid'], spec['name'], node=spec.get('node', 'pve1'),
                       status=spec.get('status', 'stopped'), config=config)
        return len(c['vms'])
    if name == 'set_config':
        vm = pve.vm(c['vmid'])
        for key, val in c['config'].items():
            if val is None:
                vm.config.pop(key, None)
            else:
                vm.config[key] = val
        if 'name' in c['config']:
            vm.name = c['config']['name']
        return vm.digest()
    if name == 'set_status':
        vm = pve.vm(c['vmid'])
        vm.status = vm.qmpstatus = c['status']
        return True
    if name == 'fail':
        pve.fail(c['method'], c['suffix'], status=c.get('status'), message=c.get('message'),
                 error=c.get('error'), times=c.get('times'))
        return True
    if name == 'faults':
        # What is left of the injected faults, so a test can prove each one really happened.
        return {'failures': [[m, sfx, r['times']] for (m, sfx), r in pve.failures.items()],
                'lost_replies': [[m, sfx, n] for (m, sfx), n in pve.lost_replies.items()],
                'task_warnings': [[m, sfx, n] for (m, sfx), n in pve.task_warnings.items()],
                'dropped': pve.dropped}
    if name == 'clear_failures':
        pve.failures.clear()
        return True
    if name == 'lost_reply':
        pve.lost_replies[(c['method'], c['suffix'])] = c.get('times', 1)
        return True
    if name == 'task_warnings':
        pve.task_warnings[(c['method'], c['suffix'])] = c.get('times', 1)
        return True
    if name == 'flaky_network':
        pve.flaky_network(drop_rate=c.get('drop_rate', 0.0), seed=c.get('seed'))
        if c.get('seed') is not None:
            pve._random.seed(c['seed'])
        return True
    if name == 'lose_quorum':
        pve.lose_quorum()
        return True
    if name == 'regain_quorum':
        pve.regain_quorum()
        return True
    if name == 'node_offline':
        pve.set_node_offline(c['node'], c.get('offline', True))
        return True
    if name == 'lock':
        # A lock left on the VM, as a running backup (or an interrupted clone) leaves it.
        pve.snapshot_lock(c['vmid'], c['lock'])
        return True
    if name == 'unlock':
        pve.unlock(c['vmid'])
        return True
    if name == 'acl':
        # Replaces the user's entries: [[path, [privileges]], ...]
        if pve.acl is None:
            pve.acl = {}
        pve.acl[c['user']] = []
        for path, privs in c['entries']:
            pve.grant(c['user'], path, *privs)
        return True
    if name == 'acl_of':
        return [[path, sorted(privs)] for path, privs in (pve.acl or {}).get(c['user'], [])]
    if name == 'datacenter_options':
        pve.datacenter = c['options']
        return True
    if name == 'meddle':
        pve.meddling[(c['vmid'], c['after'])] = {'times': c.get('times', 1), 'set': c['set'], 'n': 0}
        return True
    if name == 'meddling':
        return [[vmid, when, r['times']] for (vmid, when), r in pve.meddling.items()]
    if name == 'grant':
        pve.grant(c['user'], c['path'], *c['privs'])
        return True
    if name == 'add_node':
        pve.add_node(c['node'])
        return True
    if name == 'storage':
        pve.storages.setdefault(c['storage'], {'type': 'lvmthin', 'active': 1, 'content': 'images,rootdir',
                                              'files': set()}).update(c.get('options', {}))
        return True
    raise ValueError('unknown command {0!r}'.format(name))


def template_config(vmid):
    # A Talos nocloud template as an operator builds it: one disk, a cloud-init drive, a NIC.
    return {'cores': 2, 'memory': 2048, 'ostype': 'l26', 'scsihw': 'virtio-scsi-pci',
            'scsi0': 'local-lvm:base-{0}-disk-0,size=10G'.format(vmid),
            'ide2': 'local-lvm:vm-{0}-cloudinit,media=cdrom'.format(vmid),
            'net0': 'virtio=BC:24:11:AA:BB:CC,bridge=vmbr0', 'boot': 'order=scsi0', 'template': 1}


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--cert', required=True)
    ap.add_argument('--key', required=True)
    ap.add_argument('--token', action='append', default=[], help="'user@realm!id=secret'")
    ap.add_argument('--template', action='append', default=[], help="'vmid@node' (default 9000@pve1)")
    ap.add_argument('--node', action='append', default=[])
    ap.add_argument('--time-scale', type=float, default=0.0)
    ap.add_argument('--task-secs', action='append', default=[], help="'qmclone=40': PVE seconds per task type")
    args = ap.parse_args()

    pve = KilnPve(user='root@pam', password='kiln-test-only', host='127.0.0.1', port=0)
    pve.time_scale = args.time_scale
    for spec in args.task_secs:
        ttype, _, secs = spec.partition('=')
        pve.task_secs[ttype] = float(secs)
    for node in args.node:
        pve.add_node(node)
    for tok in args.token:
        tokenid, _, secret = tok.partition('=')
        pve.apitokens[tokenid] = secret
    for spec in args.template or ['9000@pve1']:
        vmid, _, node = spec.partition('@')
        vmid = int(vmid)
        pve.add_vm(vmid, 'talos-template-{0}'.format(vmid), node=node or 'pve1', template=True,
                   config=template_config(vmid))
        store = pve.storages['local-lvm'].setdefault('volumes', {})
        store['base-{0}-disk-0'.format(vmid)] = {'content': 'images', 'format': 'raw', 'size': 10 * GIB,
                                                 'vmid': vmid, 'ctime': 0}
    await pve.start(args.cert, args.key)
    print('READY {0}'.format(pve.port), flush=True)

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=64 * 1024 * 1024)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            break
        try:
            out = {'ok': await command(pve, json.loads(line))}
        except Exception as e:  # noqa: BLE001 - the test reads the message
            out = {'error': '{0}: {1}'.format(type(e).__name__, e)}
        print(json.dumps(out, default=str), flush=True)
    await pve.stop()


if __name__ == '__main__':
    asyncio.run(main())
