// js-sender-policy: per-domain rules for the MAIL FROM address. A Postrider mail-from plugin
// in JavaScript, built with componentize-js (see build.sh).
//
// Each sender domain gets an action, the most specific rule first: an exact domain
// ("example.com"), then the longest matching "*.suffix" (subdomains of suffix, not suffix
// itself), then `default`. The null sender (bounces) uses `null_sender`.
//
//   "allow"         accept: later mail-from plugins are not asked
//   "continue"      no opinion (the default)
//   "deny"          550 5.7.1
//   "require-auth"  530 5.7.0 unless the client authenticated (stops spoofing your own
//                   domains from outside), then continue
//   "require-tls"   530 5.7.0 unless the session is TLS, then continue
//
// Config (the plugin's `config` table, given to init as JSON):
//   domains      table: domain or "*.suffix" → action, or { action, text } with a reply text
//   default      action for other domains, default "continue"
//   null_sender  action for MAIL FROM:<>, default "continue"
//
// Example:
//   config = { default = "continue", domains = {
//       "example.org" = "require-auth",          # our own domain: only our users
//       "*.example.org" = "require-auth",
//       "partner.example" = "require-tls",
//       "spam.example" = { action = "deny", text = "We do not take mail from spam.example" },
//   } }

// An interface's functions are the named exports of its module: `log` is the function.
import { log } from 'postrider:plugin/log@0.1.0';

const ACTIONS = ['allow', 'continue', 'deny', 'require-auth', 'require-tls'];
const TOP_KEYS = ['domains', 'default', 'null_sender'];
const DOMAIN = /^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
const MAX_TEXT = 200;

let policy = null;

function fail(message) {
  // componentize-js returns a thrown value as the `err` of init's result.
  throw `js-sender-policy: ${message}`;
}

function rule(value, where) {
  if (typeof value === 'string') value = { action: value };
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    fail(`${where}: expected an action or a table { action, text }`);
  }
  for (const key of Object.keys(value)) {
    if (key !== 'action' && key !== 'text') fail(`${where}: unknown key "${key}"`);
  }
  if (!ACTIONS.includes(value.action)) {
    fail(`${where}: action must be one of ${ACTIONS.join(', ')}, not ${JSON.stringify(value.action)}`);
  }
  if (value.text !== undefined) {
    if (typeof value.text !== 'string' || !value.text || /[\x00-\x1f\x7f]/.test(value.text) || value.text.length > MAX_TEXT) {
      fail(`${where}: text must be one line of at most ${MAX_TEXT} characters`);
    }
  }
  return { action: value.action, text: value.text };
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
  const exact = new Map();
  const suffixes = [];
  const domains = table.domains ?? {};
  if (domains === null || typeof domains !== 'object' || Array.isArray(domains)) fail('domains must be a table');
  for (const [name, value] of Object.entries(domains)) {
    const domain = name.toLowerCase().replace(/\.$/, '');
    if (!DOMAIN.test(domain)) fail(`domains: "${name}" is not a domain or *.suffix`);
    const r = rule(value, `domains."${name}"`);
    if (domain.startsWith('*.')) suffixes.push([domain.slice(1), r]); // ".example.org"
    else exact.set(domain, r);
  }
  suffixes.sort((a, b) => b[0].length - a[0].length); // the longest (most specific) first
  return {
    exact,
    suffixes,
    fallback: rule(table.default ?? 'continue', 'default'),
    nullSender: rule(table.null_sender ?? 'continue', 'null_sender'),
  };
}

function domainOf(address) {
  const at = address.lastIndexOf('@');
  return at < 0 ? '' : address.slice(at + 1).toLowerCase().replace(/\.$/, '');
}

function lookup(domain) {
  const r = policy.exact.get(domain);
  if (r) return [r, domain];
  for (const [suffix, s] of policy.suffixes) {
    if (domain.endsWith(suffix)) return [s, `*${suffix}`];
  }
  return [policy.fallback, 'default'];
}

function reject(code, enhanced, text) {
  return { tag: 'reject', val: { code, enhanced, text: text.slice(0, MAX_TEXT) } };
}

const CONTINUE = { tag: 'continue' };

export const filter = {
  init(config) {
    policy = parseConfig(config);
    return { mailFrom: true };
  },

  onMailFrom(conn, env) {
    try {
      return decide(conn, env);
    } catch (e) {
      // An exception traps the instance (the host applies failure_policy); say why first.
      log('error', `js-sender-policy: ${e}`);
      throw e;
    }
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

function decide(conn, env) {
  const sender = env.mailFrom;
  const domain = domainOf(sender);
  const [r, matched] = sender === '' ? [policy.nullSender, 'null sender'] : lookup(domain);
  const shown = sender === '' ? '<>' : domain;
  switch (r.action) {
    case 'allow':
      return { tag: 'accept' };
    case 'continue':
      return CONTINUE;
    case 'deny':
      log('info', `sender ${sender || '<>'} denied by rule ${matched}`);
      return reject(550, '5.7.1', r.text ?? `Sender domain ${shown} is not accepted here`);
    case 'require-auth':
      if (conn.authUser !== undefined && conn.authUser !== null) return CONTINUE;
      log('info', `sender ${sender || '<>'} without AUTH refused by rule ${matched}`);
      return reject(530, '5.7.0', r.text ?? `Authentication required to send as ${shown}`);
    case 'require-tls':
      if (conn.tls !== undefined && conn.tls !== null) return CONTINUE;
      log('info', `sender ${sender || '<>'} without TLS refused by rule ${matched}`);
      return reject(530, '5.7.0', r.text ?? `Must issue a STARTTLS command first to send as ${shown}`);
  }
  return CONTINUE;
}
