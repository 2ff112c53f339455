// A Node.js worker that takes its args from argsbroker.
//
// At startup it waits for the broker (up to ARGSBROKER_TIMEOUT_MS, default
// 10 s), takes the current args over gRPC on the broker's Unix socket, then
// keeps them fresh by following the broker's Follow stream, telling it after
// each revision which one it serves (WatchArgs, reporting nothing, from a
// broker without Follow), and reconnecting with jittered backoff, capped at
// 1 s, if the broker goes away. It names itself ARGSBROKER_NAME (default: the
// script's file name, worker.js) in `broker status`. It serves GET /args as
// {"args": <document>} from the broker's exact JSON text: JavaScript numbers
// cannot hold a 30-digit integer, so the text is passed through, not re-encoded.
//
//   ARGSBROKER_SOCKET=/tmp/argsbroker.sock PORT=8080 node worker.js
//   ARGSBROKER_NAME="worker 127.0.0.1:8080" node worker.js
//   node worker.js --print          # print the args once and exit
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import grpc from '@grpc/grpc-js';
import protoLoader from '@grpc/proto-loader';

const here = path.dirname(fileURLToPath(import.meta.url));
// The project's own proto, not a copy.
const PROTO_ROOT = path.resolve(here, '../../proto');

export const DEFAULT_SOCKET = '/tmp/argsbroker.sock';

// The broker's HTTP/2 layer refuses a socket path as :authority; send "localhost".
const CHANNEL_OPTIONS = {
  'grpc.default_authority': 'localhost',
  'grpc.max_receive_message_length': -1,
  'grpc.max_reconnect_backoff_ms': 1000,
};

const { argsbroker } = grpc.loadPackageDefinition(
  protoLoader.loadSync('argsbroker/v1/args.proto', {
    includeDirs: [PROTO_ROOT],
    keepCase: true,
    longs: String, // uint64 revisions stay exact
    defaults: true,
  }),
);

/** A client for the broker on `socketPath` (no connection is made yet). */
export function connect(socketPath = process.env.ARGSBROKER_SOCKET || DEFAULT_SOCKET) {
  return new argsbroker.v1.ArgsBroker(`unix:${path.resolve(socketPath)}`, grpc.credentials.createInsecure(), CHANNEL_OPTIONS);
}

/** GetArgs: {revision, json, sha256, lineage} for the document or the value at an RFC 6901 pointer. */
export function getArgs(client, pointer = '', timeoutMs = 5000) {
  return new Promise((resolve, reject) => {
    client.GetArgs({ pointer }, { deadline: Date.now() + timeoutMs }, (err, reply) => (err ? reject(err) : resolve(reply)));
  });
}

// One unary call, as a promise.
function unary(client, method, request, timeoutMs) {
  return new Promise((resolve, reject) => {
    client[method](request, { deadline: Date.now() + timeoutMs }, (err, reply) => (err ? reject(err) : resolve(reply)));
  });
}

// A write's canary fields: `canary` (a selector: 2, '25%', 'name=GLOB'),
// `bakeMs` (only with a canary) and `force`.
function canaryFields({ canary, bakeMs, force } = {}) {
  const selector = canary === undefined || canary === null ? '' : String(canary);
  if (bakeMs !== undefined && bakeMs !== null && !selector) throw new TypeError('bakeMs needs canary: it is how long a canary runs before the broker promotes it');
  return { canary: selector, bake_ms: bakeMs || 0, force: Boolean(force) };
}

/**
 * PatchArgs with an RFC 7386 merge patch (an object or JSON text); resolves to the new snapshot.
 * `options.canary` (2, '25%', 'name=GLOB') starts a canary instead: the result goes only to the
 * followers the selector picks (by their names) until promoteCanary or abortCanary, and is what
 * this resolves to; `options.bakeMs`: the broker promotes it by itself once every selected
 * follower has applied it for that long; `options.force`: abort a running canary first instead
 * of being refused (FAILED_PRECONDITION, which a plain write gets while a canary runs).
 */
export function patchArgs(client, mergePatch, timeoutMs = 5000, options = {}) {
  const merge_patch = typeof mergePatch === 'string' ? mergePatch : JSON.stringify(mergePatch);
  return unary(client, 'PatchArgs', { merge_patch, ...canaryFields(options) }, timeoutMs);
}

/** SetArgs: replaces the whole document (an object or JSON text); `options` as for patchArgs. */
export function setArgs(client, document, timeoutMs = 5000, options = {}) {
  const json = typeof document === 'string' ? document : JSON.stringify(document);
  return unary(client, 'SetArgs', { json, ...canaryFields(options) }, timeoutMs);
}

/** PromoteCanary: the running canary's candidate goes to everyone, as the same revision (the reply). */
export function promoteCanary(client, { candidateRevision } = {}, timeoutMs = 5000) {
  const request = candidateRevision === undefined ? {} : { candidate_revision: String(candidateRevision) };
  return unary(client, 'PromoteCanary', request, timeoutMs);
}

/** AbortCanary: a new revision (the reply) with the stable document, for every follower; `reason` goes into the history. */
export function abortCanary(client, { reason = '', candidateRevision } = {}, timeoutMs = 5000) {
  const request = { reason, ...(candidateRevision === undefined ? {} : { candidate_revision: String(candidateRevision) }) };
  return unary(client, 'AbortCanary', request, timeoutMs);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
// Half to all of the step, so that many workers do not retry in step.
const jitter = (step) => step / 2 + Math.random() * (step / 2);

/** Waits up to `timeoutMs` for the broker to answer GetArgs; rejects with an error naming the socket. */
export async function waitForBroker(socketPath = process.env.ARGSBROKER_SOCKET || DEFAULT_SOCKET, timeoutMs = 10000) {
  const deadline = Date.now() + timeoutMs;
  let step = 10;
  for (let attempt = 0; ; attempt++) {
    const client = connect(socketPath);
    try {
      const first = await getArgs(client, '', Math.max(100, Math.min(2000, deadline - Date.now())));
      return { client, first };
    } catch (err) {
      client.close();
      if (err.code !== grpc.status.UNAVAILABLE && err.code !== grpc.status.DEADLINE_EXCEEDED) throw err;
      if (Date.now() >= deadline) {
        throw new Error(`no argsbroker answered at ${socketPath} within ${timeoutMs / 1000} s (last error: ${err.details || err.message})`);
      }
      if (attempt === 0) console.error(`argsbroker: no broker at ${socketPath} yet; waiting up to ${timeoutMs / 1000} s`);
    }
    await sleep(Math.min(jitter(step), Math.max(0, deadline - Date.now())));
    step = Math.min(step * 2, 1000);
  }
}

/**
 * The lineage rule every follower keeps: what to do with `offered` while
 * holding `held` (both {revision, sha256, lineage}). Within one lineage never
 * go back to an older revision ('older': keep what is held); a different
 * lineage, or the same revision with a different sha256, means the broker's
 * state was reset or replaced: 'new lineage', adopt it at once.
 */
export function verdict(held, offered) {
  if ((offered.lineage || '') !== (held.lineage || '')) return 'new lineage';
  const [h, o] = [BigInt(held.revision), BigInt(offered.revision)];
  if (o === h) return offered.sha256 === held.sha256 ? 'same' : 'new lineage';
  return o > h ? 'newer' : 'older';
}

/** How a follower names itself unless told: this script's file name, else "node". */
export function defaultName() {
  return process.argv[1] ? path.basename(process.argv[1]) : 'node';
}

/**
 * The live args: waits for the broker, then follows it on a Follow stream.
 * `live.current` is always the newest {revision, json, sha256, lineage}:
 * within one lineage it never goes back to an older revision, and a new
 * lineage (the broker's state was reset or replaced) is adopted at once, with
 * a warning. Each Follow stream starts with a FollowRequest naming this
 * follower (`options.name`, default `defaultName()`) and stating the revision
 * it serves; another follows each revision it applies. A broker without
 * Follow (UNIMPLEMENTED) is followed with WatchArgs, reporting nothing
 * (`live.reporting` is false).
 */
export async function follow(socketPath = process.env.ARGSBROKER_SOCKET || DEFAULT_SOCKET, timeoutMs = 10000, options = {}) {
  const { client, first } = await waitForBroker(socketPath, timeoutMs);
  const name = options.name || defaultName();
  const live = { current: first, client, name, reporting: false, closed: false, close: () => { live.closed = true; live.call?.cancel(); client.close(); } };
  // This follower's whole position; it rejects nothing, so rejected_revision stays 0.
  const position = () => ({ name, applied_revision: live.current.revision, applied_lineage: live.current.lineage, rejected_revision: '0', rejected_reason: '' });
  // Returns whether the revision served changed (there is something to report).
  const apply = (args) => {
    const v = verdict(live.current, args);
    if (v === 'new lineage') {
      console.warn(`the broker's args have a new lineage (its state was reset or replaced); serving its revision ${args.revision}`);
    }
    if (v === 'newer' || v === 'new lineage') {
      live.current = args;
      return true;
    }
    return false;
  };
  let step = 20;
  const watch = (useFollow = true) => {
    if (live.closed) return;
    const call = useFollow ? client.Follow() : client.WatchArgs({});
    live.call = call;
    live.reporting = useFollow;
    if (useFollow) call.write(position());
    let unimplemented = false;
    call.on('data', (args) => {
      step = 20;
      if (apply(args) && useFollow) call.write(position());
    });
    call.on('error', (err) => { unimplemented = useFollow && err.code === grpc.status.UNIMPLEMENTED; });
    // 'status' comes last, however the call ended; reconnect there.
    call.on('status', () => {
      if (useFollow) call.end();
      if (live.closed) return;
      if (unimplemented) return watch(false); // a broker from before Follow
      setTimeout(watch, jitter(step)).unref();
      step = Math.min(step * 2, 1000);
    });
  };
  watch();
  return live;
}

/** An HTTP server answering GET /args from the live args. */
export function serve(live) {
  return http.createServer((req, res) => {
    if (req.method === 'GET' && req.url === '/args') {
      const { revision, json } = live.current;
      res.writeHead(200, { 'content-type': 'application/json', 'x-args-revision': revision, 'x-worker-pid': String(process.pid) });
      res.end(`{"args":${json}}`);
    } else {
      res.writeHead(404, { 'content-type': 'application/json' });
      res.end('{"error":"not found"}');
    }
  });
}

async function main() {
  const socketPath = process.env.ARGSBROKER_SOCKET || DEFAULT_SOCKET;
  const timeoutMs = Number(process.env.ARGSBROKER_TIMEOUT_MS || 10000);
  if (process.argv.includes('--print')) {
    const { client, first } = await waitForBroker(socketPath, timeoutMs);
    console.log(first.json);
    client.close();
    return;
  }
  const live = await follow(socketPath, timeoutMs, { name: process.env.ARGSBROKER_NAME });
  const server = serve(live);
  server.listen(Number(process.env.PORT || 8080), process.env.HOST || '127.0.0.1', () => {
    const { address, port } = server.address();
    console.log(`listening on http://${address}:${port} (args revision ${live.current.revision})`);
  });
  const stop = () => { live.close(); server.close(() => process.exit(0)); };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main().catch((err) => {
    console.error(`worker: ${err.message}`);
    process.exit(1);
  });
}
