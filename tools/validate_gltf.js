// Validate glTF/GLB files with the Khronos glTF validator; prints one JSON report per file
// ({path, errors, warnings, messages}) as a JSON array. Usage: node validate_gltf.js FILE...
const fs = require("fs");
const path = require("path");
const validator = require("gltf-validator");

async function validate(file) {
  const data = new Uint8Array(fs.readFileSync(file));
  const report = await validator.validateBytes(data, {
    uri: path.basename(file),
    maxIssues: 50,
    externalResourceFunction: (uri) =>
      Promise.resolve(new Uint8Array(fs.readFileSync(path.join(path.dirname(file), decodeURI(uri))))),
  });
  return {
    path: file,
    errors: report.issues.numErrors,
    warnings: report.issues.numWarnings,
    messages: report.issues.messages.filter((m) => m.severity <= 1),
  };
}

Promise.all(process.argv.slice(2).map(validate)).then(
  (reports) => console.log(JSON.stringify(reports)),
  (err) => { console.error(String(err)); process.exit(2); },
);
