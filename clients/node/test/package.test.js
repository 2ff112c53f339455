// The package's licence: the repository's two licence texts, byte for byte,
// and package.json saying so (MIT OR Apache-2.0, as Cargo.toml does).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(path.dirname(fileURLToPath(import.meta.url)));
const repo = path.resolve(here, '..', '..');

test('LICENSE-MIT and LICENSE-APACHE are the repository\'s, and package.json names both', () => {
  for (const name of ['LICENSE-MIT', 'LICENSE-APACHE']) {
    assert.equal(fs.readFileSync(path.join(here, name), 'utf8'), fs.readFileSync(path.join(repo, name), 'utf8'), name);
  }
  const pkg = JSON.parse(fs.readFileSync(path.join(here, 'package.json'), 'utf8'));
  assert.equal(pkg.license, '(MIT OR Apache-2.0)');
  assert.match(fs.readFileSync(path.join(repo, 'Cargo.toml'), 'utf8'), /\nlicense = "MIT OR Apache-2\.0"\n/);
});
