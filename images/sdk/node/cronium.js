// Cronium's script helpers for node, talking to the runtime API over /cronium/api.sock.
// Loaded with `node --require`, it defines the global `cronium`; `require('./cronium.js')` and
// `require('cronium')` also return it. input() and event() are synchronous (as in Cronium);
// the other helpers return Promises.
'use strict';
const fs = require('fs');
const http = require('http');

const SOCKET = process.env.CRONIUM_API_SOCKET || '/cronium/api.sock';
const TOKEN_FILE = process.env.CRONIUM_API_TOKEN_FILE || '/cronium/token';
let token = null;

class CroniumError extends Error {}

function call(method, path, body) {
  if (token === null) token = fs.readFileSync(TOKEN_FILE, 'utf8').trim();
  const data = body === undefined ? null : Buffer.from(JSON.stringify(body));
  const headers = { Authorization: `Bearer ${token}` };
  if (data) { headers['Content-Type'] = 'application/json'; headers['Content-Length'] = data.length; }
  return new Promise((resolve, reject) => {
    const req = http.request({ socketPath: SOCKET, path, method, headers }, (res) => {
      const parts = [];
      res.on('data', (c) => parts.push(c));
      res.on('end', () => {
        let payload = {};
        try { payload = JSON.parse(Buffer.concat(parts).toString() || '{}'); } catch (e) { /* keep {} */ }
        if (res.statusCode >= 400) {
          let msg = payload.error || `helper call failed (HTTP ${res.statusCode})`;
          if (payload.hint) msg += ` (hint: ${payload.hint})`;
          reject(new CroniumError(msg));
        } else resolve(payload.value === undefined ? null : payload.value);
      });
    });
    req.on('error', reject);
    if (data) req.write(data);
    req.end();
  });
}

function readJson(file) {
  return JSON.parse(fs.readFileSync(file, 'utf8'));
}

const cronium = {
  CroniumError,
  input() { call('GET', '/v1/input').catch(() => {}); return readJson('/cronium/input.json'); },
  event() { call('GET', '/v1/event').catch(() => {}); return readJson('/cronium/event.json'); },
  output(data) { return call('POST', '/v1/output', { value: data }); },
  getVariable(key) { return call('GET', `/v1/variables/${encodeURIComponent(key)}`); },
  setVariable(key, value) { return call('PUT', `/v1/variables/${encodeURIComponent(key)}`, { value }); },
  setCondition(condition) {
    if (typeof condition !== 'boolean') return Promise.reject(new CroniumError('setCondition takes true or false'));
    return call('POST', '/v1/condition', { value: condition });
  },
  secret(name) { return call('GET', `/v1/secrets/${encodeURIComponent(name)}`); },
};
cronium.getSecret = cronium.secret;

globalThis.cronium = cronium;
module.exports = cronium;
module.exports.cronium = cronium;
