// The committed code cells (code/NAME.hex, embedded by the Rust side) must be exactly what the
// current sources compile to. Regenerate them with `node compile.mjs`.
import { it } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { compile, codeHex, CODE_DIR } from '../compile.mjs';

for (const name of ['channel', 'anchor']) {
    it(`code/${name}.hex matches a fresh compile of ${name}.tolk`, async () => {
        const stale = `ton/contract/code/${name}.hex is stale: run \`node compile.mjs\``;
        const path = join(CODE_DIR, `${name}.hex`);
        assert.ok(existsSync(path), stale);
        const committed = readFileSync(path, 'utf-8');
        const fresh = codeHex(await compile(name));
        assert.ok(committed === fresh, stale);
    });
}
