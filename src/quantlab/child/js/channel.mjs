/**
 * The child's end of the worker channel: one ZeroMQ DEALER under a routing id of
 * 128 random bits (no other peer can take it first), one msgpack frame per message. The messages are
 * quantlab/protocol.py's tagged structs: a map whose `type` key names the
 * message; `bytes` fields (state JSON) travel as msgpack bin, i.e. a Uint8Array.
 *
 * One read loop takes every frame: an ApiResult settles the Promise of its
 * call, anything else waits in the inbox for the runner's `next()`, so a Stop
 * or Message that comes while a hook awaits an API call is handled after the hook.
 */

import { randomBytes } from "node:crypto";
import { createRequire } from "node:module";
import { join } from "node:path";
import { API_ERRORS, ApiError } from "./errors.mjs";

/** Milliseconds the socket may keep unsent messages (Exited, Error) after close. */
const LINGER_MS = 2000;

/**
 * The installed npm packages, from `dir`'s node_modules (`qlab js install` puts them
 * in the package's js directory or under the user's home).
 */
export function loadRuntime(dir) {
  const require = createRequire(join(dir, "runtime.cjs"));
  return { zmq: require("zeromq"), msgpack: require("@msgpack/msgpack") };
}

export class Channel {
  /** @param {{zmq: any, msgpack: any}} runtime @param {string} endpoint */
  constructor({ zmq, msgpack }, endpoint) {
    this.msgpack = msgpack;
    this.socket = new zmq.Dealer({ routingId: `c${randomBytes(16).toString("hex")}`, linger: LINGER_MS });
    this.socket.connect(endpoint);
    this.inbox = [];
    this.waiting = null;
    this.calls = new Map();
    this.nextCall = 0;
    /** Init's limits, once it came: until then nothing but Hello is sent. */
    this.limits = null;
    // zeromq.js takes one send at a time: later ones queue behind it, in order.
    this.sending = Promise.resolve();
    this.closed = false;
    // Reading ends with an error once the socket is closed; before that, an error must end the child.
    this.reading = this.read().catch((e) => {
      if (!this.closed) throw e;
    });
  }

  /** `msg` as its frame. */
  encode(msg) {
    return this.msgpack.encode(msg);
  }

  /** Queue `msg` for the worker (sends keep their order). */
  send(msg) {
    return this.sendFrame(this.encode(msg));
  }

  /** Queue an encoded message for the worker. */
  sendFrame(frame) {
    this.sending = this.sending.then(() => this.socket.send(frame));
    return this.sending;
  }

  /** The next message that is not an API answer. */
  next() {
    if (this.inbox.length) return Promise.resolve(this.inbox.shift());
    return new Promise((resolve) => (this.waiting = resolve));
  }

  /** One pybit call through the worker; rejects with the ApiError subclass of the answer's kind. */
  call(account, method, kwargs) {
    const callId = ++this.nextCall;
    const frame = this.encode({ type: "api_call", call_id: callId, account, method, kwargs });
    const limit = this.limits.call_bytes;
    if (frame.length > limit) {
      return Promise.reject(new ApiError(`${method}: its arguments take ${frame.length} bytes, over the limit of ${limit} for one call`, 0));
    }
    return new Promise((resolve, reject) => {
      this.calls.set(callId, { resolve, reject });
      this.sendFrame(frame).catch(reject);
    });
  }

  async read() {
    for await (const [frame] of this.socket) {
      const msg = this.msgpack.decode(frame);
      if (msg.type === "api_result") {
        this.settle(msg);
      } else if (this.waiting) {
        const resolve = this.waiting;
        this.waiting = null;
        resolve(msg);
      } else {
        this.inbox.push(msg);
      }
    }
  }

  settle(result) {
    const call = this.calls.get(result.call_id);
    if (!call) return;
    this.calls.delete(result.call_id);
    if (result.ok) call.resolve(result.result);
    else call.reject(new (API_ERRORS[result.kind] ?? ApiError)(result.error, result.ret_code));
  }

  /** Wait for what was sent to leave, then close (the linger lets the last frames go out). */
  async close() {
    await this.sending.catch(() => {});
    this.closed = true;
    this.socket.close();
  }
}
