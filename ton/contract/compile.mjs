// Compiles the Tolk contracts of this directory in-process with @ton/tolk-js
// (the Tolk stdlib ships inside that package, nothing is fetched).
//
// Library use:   import { compile } from './compile.mjs'; const code = await compile('channel');
// CLI use:       node compile.mjs channel   -> build/channel.boc, build/channel.hex, build/channel.fif,
//                                              build/channel.json and code/channel.hex
//                node compile.mjs anchor    -> build/anchor.boc, ..., code/anchor.hex
//                node compile.mjs           -> both
// The .boc file is a standard bag-of-cells (no index, with CRC) holding the code cell;
// the .hex files are the same bytes as lowercase hex plus a newline. build/ is gitignored;
// code/NAME.hex is committed so that Rust can embed the code without running Node
// (test/code.test.mjs fails when it is stale).
import { readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { runTolkCompiler } from '@ton/tolk-js';
import { Cell } from '@ton/core';

const HERE = dirname(fileURLToPath(import.meta.url));
const CONTRACTS = ['channel', 'anchor'];
export const CODE_DIR = join(HERE, 'code');

/** The committed BoC of a compiled code cell: no index, with CRC32 (same bytes as build/NAME.boc). */
export const codeBoc = (cell) => cell.toBoc({ idx: false, crc32: true });
/** Content of code/NAME.hex for a code cell: lowercase hex of `codeBoc(cell)` plus a newline. */
export const codeHex = (cell) => codeBoc(cell).toString('hex') + '\n';

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
    mkdirSync(CODE_DIR, { recursive: true });
    for (const name of names) {
        const result = await compileRaw(name);
        const cell = Cell.fromBoc(Buffer.from(result.codeBoc64, 'base64'))[0];
        const boc = codeBoc(cell);
        writeFileSync(join(outDir, `${name}.boc`), boc);
        writeFileSync(join(outDir, `${name}.hex`), codeHex(cell));
        writeFileSync(join(CODE_DIR, `${name}.hex`), codeHex(cell));
        writeFileSync(join(outDir, `${name}.fif`), result.fiftCode);
        writeFileSync(
            join(outDir, `${name}.json`),
            JSON.stringify({ name, tolkVersion: result.tolkVersion, codeHashHex: cell.hash().toString('hex'), bocHex: boc.toString('hex') }, null, 2) + '\n',
        );
        console.log(`${name}: ${boc.length} bytes, code hash ${cell.hash().toString('hex')} -> build/${name}.boc, code/${name}.hex`);
    }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
    main(process.argv.slice(2)).catch((e) => {
        console.error(e.message ?? e);
        process.exit(1);
    });
}
