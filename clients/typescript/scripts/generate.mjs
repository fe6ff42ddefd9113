// Generate src/gen (ts-proto messages + @grpc/grpc-js clients) from proto/riskmesh/v1.
//
//   node scripts/generate.mjs                  regenerate src/gen in place
//   node scripts/generate.mjs --check          exit 1 when src/gen differs from a fresh generation
//   node scripts/generate.mjs --workspace DIR  read the protos from DIR (a buf workspace; default: the repo root)
//
// buf (locked npm dev dependency) compiles the protos and runs ts-proto with the options
// in buf.gen.yaml; nothing is downloaded at generation time.
import { spawnSync } from "node:child_process";
import { cpSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

const PACKAGE_DIR = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const GENERATED_DIR = join(PACKAGE_DIR, "src", "gen");
const BUF = join(PACKAGE_DIR, "node_modules", "@bufbuild", "buf", "bin", "buf");

/** Every file under dir, as paths relative to dir, sorted. */
function listFiles(dir) {
  if (!existsSync(dir)) return [];
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((entry) => entry.isFile())
    .map((entry) => relative(dir, join(entry.parentPath, entry.name)))
    .sort();
}

/** Relative paths that are missing on one side or differ in content. */
function differingFiles(fresh, current) {
  const freshFiles = new Set(listFiles(fresh));
  const currentFiles = new Set(listFiles(current));
  const differing = [];
  for (const name of [...new Set([...freshFiles, ...currentFiles])].sort()) {
    if (!freshFiles.has(name) || !currentFiles.has(name)) differing.push(name);
    else if (!readFileSync(join(fresh, name)).equals(readFileSync(join(current, name)))) differing.push(name);
  }
  return differing;
}

function generateInto(workspace, outBase) {
  const result = spawnSync(process.execPath, [BUF, "generate", workspace, "--template", "buf.gen.yaml", "-o", outBase], {
    cwd: PACKAGE_DIR,
    stdio: ["ignore", "inherit", "inherit"],
  });
  if (result.status !== 0) {
    console.error(`buf generate failed (exit ${result.status ?? result.signal})`);
    process.exit(2);
  }
  return join(outBase, "src", "gen");
}

function main() {
  const { values } = parseArgs({
    options: {
      check: { type: "boolean", default: false },
      workspace: { type: "string", default: resolve(PACKAGE_DIR, "..", "..") },
    },
  });
  const workspace = resolve(values.workspace);
  const scratch = mkdtempSync(join(tmpdir(), "riskmesh-ts-gen-"));
  try {
    const fresh = generateInto(workspace, scratch);
    const differing = differingFiles(fresh, GENERATED_DIR);
    if (values.check) {
      if (differing.length > 0) {
        console.error(`generated TypeScript is stale, run \`make clients-ts\`: ${differing.join(", ")}`);
        process.exit(1);
      }
      console.log(`generated TypeScript is fresh (${listFiles(fresh).length} files)`);
      return;
    }
    rmSync(GENERATED_DIR, { recursive: true, force: true });
    cpSync(fresh, GENERATED_DIR, { recursive: true });
    console.log(`generated ${listFiles(GENERATED_DIR).length} files into ${relative(PACKAGE_DIR, GENERATED_DIR)}`);
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
}

main();
