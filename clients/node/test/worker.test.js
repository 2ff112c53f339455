// The Node.js recipe against the real broker binary (ARGSBROKER_BIN, default
// <repo>/target/debug/broker), each test in a temp dir, every process stopped
// by pid, readiness polled with deadlines.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import grpc from '@grpc/grpc-js';
import protoLoader from '@grpc/proto-loader';
import { abortCanary, connect, follow, getArgs, patchArgs, promoteCanary, setArgs, verdict, waitForBroker } from '../worker.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(here, '../../..');
const BROKER = process.env.ARGSBROKER_BIN || path.join(REPO, 'target/debug/broker');
const WORKER = path.resolve(here, '../worker.js');
const BIG_INT = '123456789012345678901234567890';
const BIG_FLOAT = '3.14159265358979323846264338327';
const ARGS = `{"model": {"name": "sentiment-zh"}, "arg1": "arg1", "exact": {"big": ${BIG_INT}, "pi": ${BIG_FLOAT}}, "greeting": "你好, 世界 ✓"}`;

const children = new Set();
after(() => { for (const child of children) stopChild(child); });

function tempDir() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'argsbroker-node-'));
  after(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

function start(cmd, args, options = {}) {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], ...options });
  child.output = '';
  child.stdout.on('data', (d) => { child.output += d; });
  child.stderr.on('data', (d) => { child.output += d; });
  child.exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  children.add(child);
  return child;
}

async function stopChild(child) {
  if (child.exitCode === null && child.signalCode === null) process.kill(child.pid, 'SIGTERM');
  const timer = setTimeout(() => { try { process.kill(child.pid, 'SIGKILL'); } catch {} }, 10000);
  const status = await child.exited;
  clearTimeout(timer);
  children.delete(child);
  return status;
}

async function eventually(what, probe, patienceMs = 20000) {
  const deadline = Date.now() + patienceMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined && value !== null && value !== false) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

function startBroker(dir, { socket = path.join(dir, 'b.sock'), args = ARGS } = {}) {
  const argsFile = path.join(dir, 'args.json');
  if (!fs.existsSync(argsFile)) fs.writeFileSync(argsFile, args);
  const broker = start(BROKER, ['--args', argsFile, '--socket', socket]);
  broker.socket = socket;
  return broker;
}

async function brokerReady(broker) {
  const { client, first } = await waitForBroker(broker.socket, 20000);
  client.close();
  return first;
}

test('GetArgs returns the exact document and pointer values', async () => {
  assert.ok(fs.existsSync(BROKER), `no broker binary at ${BROKER}: run cargo build or set ARGSBROKER_BIN`);
  const broker = startBroker(tempDir());
  await brokerReady(broker);
  const client = connect(broker.socket);
  try {
    const whole = await getArgs(client);
    assert.match(whole.json, new RegExp(`"big":${BIG_INT},"pi":${BIG_FLOAT.replace('.', '\\.')}`));
    assert.ok(whole.json.includes('"greeting":"你好, 世界 ✓"'));
    assert.equal(typeof whole.revision, 'string'); // uint64 kept exact
    assert.equal((await getArgs(client, '/exact/big')).json, BIG_INT);
    assert.equal((await getArgs(client, '/model/name')).json, '"sentiment-zh"');
    await assert.rejects(getArgs(client, '/nope'), (err) => err.code === 5); // NOT_FOUND
  } finally {
    client.close();
  }
  assert.equal((await stopChild(broker)).code, 0);
});

test('the worker serves {"args": <document>} and follows a patch', async () => {
  const broker = startBroker(tempDir());
  const first = await brokerReady(broker);
  const worker = start(process.execPath, [WORKER], { env: { ...process.env, ARGSBROKER_SOCKET: broker.socket, PORT: '0' } });
  const url = await eventually('the worker to listen', () => worker.output.match(/listening on (http:\S+)/)?.[1]);
  let res = await fetch(`${url}/args`);
  assert.equal(res.status, 200);
  assert.equal(res.headers.get('x-args-revision'), first.revision);
  assert.equal(await res.text(), `{"args":${first.json}}`);

  const client = connect(broker.socket);
  const patched = await patchArgs(client, { arg1: 'patched' });
  client.close();
  const body = await eventually('the worker to serve the patch', async () => {
    const r = await fetch(`${url}/args`);
    return r.headers.get('x-args-revision') === patched.revision ? r.text() : null;
  });
  assert.equal(body, `{"args":${patched.json}}`);
  assert.equal((await stopChild(worker)).code, 0);
  await stopChild(broker);
});

test('the worker waits for a broker that starts later, and survives its restart', async () => {
  const dir = tempDir();
  const socket = path.join(dir, 'b.sock');
  const worker = start(process.execPath, [WORKER], { env: { ...process.env, ARGSBROKER_SOCKET: socket, PORT: '0', ARGSBROKER_TIMEOUT_MS: '30000' } });
  await eventually('the worker to say it is waiting', () => worker.output.includes(`no broker at ${socket} yet`));
  assert.equal(worker.exitCode, null);
  let broker = startBroker(dir);
  const url = await eventually('the worker to listen', () => worker.output.match(/listening on (http:\S+)/)?.[1]);
  const before = await brokerReady(broker);
  assert.equal(await (await fetch(`${url}/args`)).text(), `{"args":${before.json}}`);

  assert.equal((await stopChild(broker)).code, 0);
  assert.equal(await (await fetch(`${url}/args`)).text(), `{"args":${before.json}}`); // still serving
  broker = startBroker(dir);
  await brokerReady(broker);
  const client = connect(broker.socket);
  const patched = await patchArgs(client, { arg1: 'after restart' });
  client.close();
  await eventually('the worker to serve the change made after the restart', async () =>
    (await (await fetch(`${url}/args`)).text()) === `{"args":${patched.json}}`);
  await stopChild(worker);
  await stopChild(broker);
});

test('--print prints the document; no broker is a clear error naming the socket', async () => {
  const dir = tempDir();
  const missing = path.join(dir, 'nobody.sock');
  const lonely = start(process.execPath, [WORKER, '--print'], { env: { ...process.env, ARGSBROKER_SOCKET: missing, ARGSBROKER_TIMEOUT_MS: '300' } });
  const status = await lonely.exited;
  assert.equal(status.code, 1);
  assert.match(lonely.output, new RegExp(`no argsbroker answered at ${missing}`));

  const broker = startBroker(dir);
  const first = await brokerReady(broker);
  const printer = start(process.execPath, [WORKER, '--print'], { env: { ...process.env, ARGSBROKER_SOCKET: broker.socket } });
  assert.equal((await printer.exited).code, 0);
  assert.equal(printer.output.trim(), first.json);
  await stopChild(broker);
});

test('a broker replaced after kill -9 (another file, another state: a new lineage) is followed at once', async () => {
  const broker = startBroker(tempDir());
  await brokerReady(broker);
  const client = connect(broker.socket);
  await patchArgs(client, { arg1: 'second' });
  const third = await patchArgs(client, { arg1: 'third' });
  client.close();
  assert.equal(third.revision, '3');
  const worker = start(process.execPath, [WORKER], { env: { ...process.env, ARGSBROKER_SOCKET: broker.socket, PORT: '0' } });
  const url = await eventually('the worker to listen', () => worker.output.match(/listening on (http:\S+)/)?.[1]);
  assert.equal((await fetch(`${url}/args`)).headers.get('x-args-revision'), '3');

  process.kill(broker.pid, 'SIGKILL');
  await broker.exited;
  const replacement = startBroker(tempDir(), { socket: broker.socket, args: '{"arg1": "from b.json"}' });
  const served = await brokerReady(replacement);
  assert.equal(served.revision, '1');
  assert.notEqual(served.lineage, third.lineage);
  assert.equal(served.lineage.length, 32);

  const body = await eventually('the worker to serve the new lineage', async () => {
    const r = await fetch(`${url}/args`);
    return r.headers.get('x-args-revision') === '1' ? r.text() : null;
  });
  assert.equal(body, '{"args":{"arg1":"from b.json"}}');
  assert.ok(worker.output.includes("the broker's args have a new lineage (its state was reset or replaced); serving its revision 1"), worker.output);
  await stopChild(worker);
  await stopChild(replacement);
});

test('the lineage rule: older within a lineage is kept out; a new lineage or another sha256 is adopted', () => {
  const held = { revision: '5', sha256: 'a', lineage: 'L1' };
  assert.equal(verdict(held, { revision: '6', sha256: 'b', lineage: 'L1' }), 'newer');
  assert.equal(verdict(held, { revision: '5', sha256: 'a', lineage: 'L1' }), 'same');
  assert.equal(verdict(held, { revision: '4', sha256: 'c', lineage: 'L1' }), 'older');
  assert.equal(verdict(held, { revision: '1', sha256: 'd', lineage: 'L2' }), 'new lineage');
  assert.equal(verdict(held, { revision: '5', sha256: 'e', lineage: 'L1' }), 'new lineage');
});

/** `broker status --json` of the broker on `socket`, parsed. */
function brokerStatus(socket) {
  return new Promise((resolve, reject) => {
    execFile(BROKER, ['status', '--socket', socket, '--json'], (err, stdout, stderr) => (err ? reject(new Error(`${err.message}: ${stderr}`)) : resolve(JSON.parse(stdout))));
  });
}

test('the worker follows on Follow: the broker lists it by name with the revision it applied', async () => {
  const broker = startBroker(tempDir());
  await brokerReady(broker);
  const named = start(process.execPath, [WORKER], { env: { ...process.env, ARGSBROKER_SOCKET: broker.socket, PORT: '0', ARGSBROKER_NAME: 'node worker' } });
  await eventually('the named worker to be listed', async () => (await brokerStatus(broker.socket)).followers.length === 1);
  const plain = start(process.execPath, [WORKER], { env: { ...process.env, ARGSBROKER_SOCKET: broker.socket, PORT: '0', ARGSBROKER_NAME: '' } });
  const listed = (status) => status.followers.map((f) => [f.name, f.pid, f.applied_revision, f.rejected_revision, f.rejected_reason]);
  const both = (revision) => [['node worker', named.pid, revision, 0, ''], ['worker.js', plain.pid, revision, 0, '']];
  await eventually('both workers to report revision 1', async () => JSON.stringify(listed(await brokerStatus(broker.socket))) === JSON.stringify(both(1)));

  const client = connect(broker.socket);
  const patched = await patchArgs(client, { arg1: 'followed' });
  client.close();
  assert.equal(patched.revision, '2');
  const status = await eventually('both workers to report revision 2', async () => {
    const s = await brokerStatus(broker.socket);
    return JSON.stringify(listed(s)) === JSON.stringify(both(2)) ? s : null;
  });
  assert.equal(status.revision, 2);
  await stopChild(named);
  await stopChild(plain);
  await eventually('the workers to leave the list', async () => (await brokerStatus(broker.socket)).followers.length === 0);
  await stopChild(broker);
});

test('a broker without Follow (UNIMPLEMENTED) is followed with WatchArgs', async () => {
  const { argsbroker } = grpc.loadPackageDefinition(protoLoader.loadSync('argsbroker/v1/args.proto', {
    includeDirs: [path.join(REPO, 'proto')], keepCase: true, longs: String, defaults: true,
  }));
  const doc = (revision, json) => ({ revision, json, sha256: String(revision).repeat(64).slice(0, 64), lineage: 'L' });
  const watches = [];
  const server = new grpc.Server();
  // Follow is left out: grpc-js answers it UNIMPLEMENTED, as a broker from before it does.
  server.addService(argsbroker.v1.ArgsBroker.service, {
    GetArgs: (call, callback) => callback(null, doc(7, '{"arg1":"old broker"}')),
    WatchArgs: (call) => { watches.push(call); call.write(doc(7, '{"arg1":"old broker"}')); },
  });
  const socket = path.join(tempDir(), 'old.sock');
  await new Promise((resolve, reject) => server.bindAsync(`unix:${socket}`, grpc.ServerCredentials.createInsecure(), (err) => (err ? reject(err) : resolve())));
  const live = await follow(socket, 5000, { name: 'test' });
  try {
    await eventually('the fallback to WatchArgs', () => watches.length === 1 && live.reporting === false);
    assert.equal(live.current.revision, '7');
    watches[0].write(doc(8, '{"arg1":"newer"}'));
    await eventually('revision 8', () => live.current.revision === '8');
    assert.equal(live.current.json, '{"arg1":"newer"}');
    assert.equal(watches.length, 1);
  } finally {
    live.close();
    server.forceShutdown();
  }
});

test('a canary goes to the followers it selects by name; promote gives it to all, abort takes it back', async () => {
  const broker = startBroker(tempDir(), { args: '{"v": 1}' });
  await brokerReady(broker);
  // Followers in this process, and a worker.js named by ARGSBROKER_NAME.
  const api = await follow(broker.socket, 5000, { name: 'api-1' });
  const batch = await follow(broker.socket, 5000, { name: 'batch' });
  const worker = start(process.execPath, [WORKER], { env: { ...process.env, ARGSBROKER_SOCKET: broker.socket, PORT: '0', ARGSBROKER_NAME: 'api-2' } });
  const client = connect(broker.socket);
  try {
    await eventually('three followers listed', async () => (await brokerStatus(broker.socket)).followers.length === 3);
    assert.throws(() => patchArgs(client, { v: 2 }, 5000, { bakeMs: 1000 }), /bakeMs needs canary/);
    const candidate = await patchArgs(client, { v: 2 }, 5000, { canary: 'name=api-*' });
    assert.equal(candidate.revision, '2');
    const status = await brokerStatus(broker.socket);
    const selected = (s) => s.followers.filter((f) => f.canary).map((f) => f.name).sort();
    assert.deepEqual(selected(status), ['api-1', 'api-2']);
    assert.equal(status.canary.candidate_revision, 2);
    await eventually('api-1 on the candidate', () => api.current.revision === '2');
    await eventually('the api-2 worker to report the candidate', async () => (await brokerStatus(broker.socket)).followers.find((f) => f.name === 'api-2').applied_revision === 2);
    // The unselected follower and plain reads keep the stable revision.
    assert.equal(batch.current.revision, '1');
    assert.equal((await getArgs(client)).revision, '1');
    // A plain write while it runs is refused, naming it.
    await assert.rejects(setArgs(client, { v: 3 }), (err) => err.code === grpc.status.FAILED_PRECONDITION && /^a canary runs \(candidate revision 2 to name=api-\*\)/.test(err.details));

    const promoted = await promoteCanary(client, { candidateRevision: 2 });
    assert.equal(promoted.revision, '2');
    await eventually('batch on the promoted revision', () => batch.current.revision === '2');
    assert.equal(batch.current.json, '{"v":2}');
    await assert.rejects(promoteCanary(client), (err) => err.code === grpc.status.FAILED_PRECONDITION && err.details === 'no canary runs');

    await setArgs(client, { v: 3 }, 5000, { canary: 'name=api-1' });
    await eventually('api-1 on the second candidate', () => api.current.revision === '3');
    const aborted = await abortCanary(client, { reason: 'node says no' });
    assert.equal(aborted.revision, '4');
    for (const live of [api, batch]) {
      await eventually('every follower on the abort', () => live.current.revision === '4');
      assert.equal(live.current.json, '{"v":2}');
    }
    // force replaces a running canary (5): aborted (6), then the write (7).
    assert.equal((await patchArgs(client, { v: 5 }, 5000, { canary: 'name=api-1', bakeMs: 3600000 })).revision, '5');
    const forced = await patchArgs(client, { v: 6 }, 5000, { force: true });
    assert.equal(forced.revision, '7');
    await eventually('batch on the forced write', () => batch.current.revision === '7');
  } finally {
    client.close();
    api.close();
    batch.close();
    await stopChild(worker);
    await stopChild(broker);
  }
});
