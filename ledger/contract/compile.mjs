// Compiles the Tolk contracts of this directory in-process with @ton/tolk-js
// (the Tolk stdlib ships inside that package, nothing is fetched).
//
// Library use:   import { compile } from './compile.mjs'; const code = await compile('channel');
// CLI use:       node compile.mjs channel   -> build/channel.boc, build/channel.hex, build/channel.fif
//                node compile.mjs anchor    -> build/anchor.boc, ...
// The .boc file is a standard bag-of-cells (no index, with CRC) holding the code cell;
// the .hex file is the same bytes as lowercase hex; the first line of the .json is the code hash.
import { readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { runTolkCompiler } from '@ton/tolk-js';
import { Cell } from '@ton/core';

const HERE = dirname(fileURLToPath(import.meta.url));
const CONTRACTS = ['channel', 'anchor'];

/** Compile `<name>.tolk`; returns the full compiler result (fiftCode, codeBoc64, codeHashHex, ...). */
export async function compileRaw(name) {
    if (!CONTRACTS.includes(name)) {
        throw new Error(`unknown contract '${name}', expected one of ${CONTRACTS.join(', ')}`);
    }
    const result = await runTolkCompiler({
        entrypointFileName: `${name}.tolk`,
        // called for the entrypoint and every non-stdlib import, paths relative to this directory
        fsReadCallback: (path) => readFileSync(join(HERE, path), 'utf-8'),
        optimizationLevel: 2,
    });
    if (result.status === 'error') {
        throw new Error(`tolk compilation of ${name}.tolk failed:\n${result.message}`);
    }
    return result;
}

/** Compile `<name>.tolk` and return its code as a @ton/core Cell. */
export async function compile(name) {
    const result = await compileRaw(name);
    return Cell.fromBoc(Buffer.from(result.codeBoc64, 'base64'))[0];
}

async function main(argv) {
    const names = argv.length ? argv : CONTRACTS;
    const outDir = join(HERE, 'build');
    mkdirSync(outDir, { recursive: true });
    for (const name of names) {
        const result = await compileRaw(name);
        const cell = Cell.fromBoc(Buffer.from(result.codeBoc64, 'base64'))[0];
        const boc = cell.toBoc({ idx: false, crc32: true });
        writeFileSync(join(outDir, `${name}.boc`), boc);
        writeFileSync(join(outDir, `${name}.hex`), boc.toString('hex') + '\n');
        writeFileSync(join(outDir, `${name}.fif`), result.fiftCode);
        writeFileSync(
            join(outDir, `${name}.json`),
            JSON.stringify({ name, tolkVersion: result.tolkVersion, codeHashHex: cell.hash().toString('hex'), bocHex: boc.toString('hex') }, null, 2) + '\n',
        );
        console.log(`${name}: ${boc.length} bytes, code hash ${cell.hash().toString('hex')} -> build/${name}.boc`);
    }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
    main(process.argv.slice(2)).catch((e) => {
        console.error(e.message ?? e);
        process.exit(1);
    });
}
