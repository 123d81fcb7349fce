// js-reputation: asks an HTTP reputation service about each sender, at MAIL FROM. A Postrider
// plugin in JavaScript that uses fetch() (componentize-js's, over wasi:http): the relay sends
// the request only if the plugin's [[plugin]] entry grants the service's origin in allow_http.
//
// For MAIL FROM:<alice@sender.example> from 203.0.113.7 the plugin GETs
//   URL?sender=alice%40sender.example&ip=203.0.113.7
// and expects JSON: { "score": NUMBER, "reason": "optional text" }. A score at or above
// reject_at refuses the sender (550 5.7.1), at or above tempfail_at defers it (451 4.7.1);
// anything else, and any failure of the service (down, denied, not JSON), continues: a
// reputation service is advice, so it fails open (the failure is logged).
//
// Config:
//   url          the service (required), http:// or https://
//   reject_at    score to refuse at (default 80)
//   tempfail_at  score to defer at (default: none)
//
// Example:
//   [[plugin]]
//   name = "reputation"
//   path = "plugins/js-reputation/js-reputation.wasm"
//   allow_http = ["http://127.0.0.1:8080"]
//   timeout_ms = 3000
//   config = { url = "http://127.0.0.1:8080/score", reject_at = 80, tempfail_at = 50 }

import { log } from 'postrider:plugin/log@0.1.0';

const TOP_KEYS = ['url', 'reject_at', 'tempfail_at'];
const MAX_TEXT = 200;

let settings = null;

function fail(message) {
  // componentize-js returns a thrown value as the `err` of init's result.
  throw `js-reputation: ${message}`;
}

function parseConfig(text) {
  let table;
  try {
    table = JSON.parse(text || '{}');
  } catch (e) {
    fail(`config is not JSON: ${e.message}`);
  }
  if (table === null || typeof table !== 'object' || Array.isArray(table)) fail('config must be a table');
  for (const key of Object.keys(table)) {
    if (!TOP_KEYS.includes(key)) fail(`unknown key "${key}"`);
  }
  if (typeof table.url !== 'string' || !/^https?:\/\/[^/?#\s]+/.test(table.url)) {
    fail('url must be an http:// or https:// URL');
  }
  const number = (key, fallback) => {
    const v = table[key] ?? fallback;
    if (v !== null && (typeof v !== 'number' || !Number.isFinite(v))) fail(`${key} must be a number`);
    return v;
  };
  return { url: table.url, rejectAt: number('reject_at', 80), tempfailAt: number('tempfail_at', null) };
}

// One printable line for an SMTP reply.
function clean(text) {
  return String(text).replace(/[^\x20-\x7e]/g, ' ').slice(0, MAX_TEXT).trim();
}

const CONTINUE = { tag: 'continue' };

async function ask(conn, env) {
  const sep = settings.url.includes('?') ? '&' : '?';
  const query = `sender=${encodeURIComponent(env.mailFrom)}&ip=${encodeURIComponent(conn.clientIp)}`;
  const response = await fetch(`${settings.url}${sep}${query}`);
  if (!response.ok) throw new Error(`HTTP ${response.status}`);
  const answer = await response.json();
  if (answer === null || typeof answer.score !== 'number') throw new Error('no numeric score in the answer');
  return answer;
}

export const filter = {
  init(config) {
    settings = parseConfig(config);
    return { mailFrom: true };
  },

  // An async export: componentize-js runs the event loop until the promise settles.
  async onMailFrom(conn, env) {
    if (env.mailFrom === '') return CONTINUE; // bounces have no sender to score
    let answer;
    try {
      answer = await ask(conn, env);
    } catch (e) {
      log('warn', `js-reputation: ${settings.url}: ${e}; continuing`);
      return CONTINUE;
    }
    const reason = answer.reason ? clean(answer.reason) : '';
    if (answer.score >= settings.rejectAt) {
      log('info', `sender ${env.mailFrom} score ${answer.score}: refused`);
      return { tag: 'reject', val: { code: 550, enhanced: '5.7.1', text: reason || `Sender reputation too low (${answer.score})` } };
    }
    if (settings.tempfailAt !== null && answer.score >= settings.tempfailAt) {
      return { tag: 'tempfail', val: { code: 451, enhanced: '4.7.1', text: reason || 'Sender reputation uncertain, try again later' } };
    }
    return CONTINUE;
  },

  // Only the mail-from stage is asked for (see init); the host never calls these.
  onConnect(conn) {
    return CONTINUE;
  },
  onHelo(conn, helo) {
    return CONTINUE;
  },
  onRcpt(conn, env, rcpt) {
    return { verdict: CONTINUE };
  },
  onData(conn, env, msg) {
    return { verdict: CONTINUE, edits: [] };
  },
  onRoute(conn, env, rcpt) {
    return { tag: 'mx' };
  },
};
