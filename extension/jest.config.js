// Unit tests of the panel's pure data handling (src/model.ts): ts-jest, node environment, no JupyterLab runtime.
module.exports = {
  preset: 'ts-jest',
  testEnvironment: 'node',
  testRegex: 'src/.*/.*.spec.ts$',
  transform: { '^.+\\.tsx?$': ['ts-jest', { tsconfig: 'tsconfig.test.json' }] }
};
