// Haraka counterpart of Postrider's rcpt-allowlist example plugin, for bench/compare.sh.
//
// For each domain in rcpt_allowlist.ini [domains] (domain=user1,user2), only the listed local
// parts are valid recipients: they are accepted (OK), any other recipient at that domain is
// refused with 550 5.1.1. Local parts compare case-insensitively, "+detail" is stripped and
// postmaster is always valid. Recipients at other domains are left to the next plugin.

'use strict'

exports.register = function () {
    this.load_allowlist()
    this.register_hook('rcpt', 'check_rcpt')
}

exports.load_allowlist = function () {
    const ini = this.config.get('rcpt_allowlist.ini', () => this.load_allowlist())
    const domains = new Map()
    for (const [domain, users] of Object.entries(ini.domains || {})) {
        const set = new Set(String(users).split(/[\s,]+/).filter(Boolean).map((u) => u.toLowerCase()))
        domains.set(domain.toLowerCase(), set)
    }
    this.domains = domains
}

exports.check_rcpt = function (next, connection, params) {
    const rcpt = params[0]
    const allowed = this.domains.get(String(rcpt.host || '').toLowerCase())
    if (!allowed) return next()
    let user = String(rcpt.user || '').toLowerCase()
    const plus = user.indexOf('+')
    if (plus >= 0) user = user.slice(0, plus)
    if (user === 'postmaster' || allowed.has(user)) return next(OK)
    next(DENY, '5.1.1 Recipient address rejected: user unknown')
}
