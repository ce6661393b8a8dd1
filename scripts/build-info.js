#!/usr/bin/env node
// Stamps the build (last build step): dist/build-info.json says which commit dist/ was
// compiled from and whether engine/ had changes not committed then. The benchmarks' machine
// line reports it, so a copy of dist/ run later (an A/B of two builds) names its own commit,
// not the one checked out when it runs. Outside a git checkout both are "unknown".
'use strict';
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const root = path.join(__dirname, '..');
const git = (args) => execFileSync('git', args, { cwd: root, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
let commit = 'unknown';
let engineDirty = 'unknown';
try {
  commit = git(['rev-parse', '--short', 'HEAD']);
  engineDirty = git(['status', '--porcelain', '--', 'engine']) !== '';
} catch {
  // not a git checkout (an npm tarball): the stamp is a courtesy
}
fs.mkdirSync(path.join(root, 'dist'), { recursive: true });
fs.writeFileSync(path.join(root, 'dist', 'build-info.json'), `${JSON.stringify({ commit, engineDirty, builtAt: new Date().toISOString() })}\n`);
