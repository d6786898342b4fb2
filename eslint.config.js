import js from '@eslint/js';
import tseslint from 'typescript-eslint';

// The layers, bottom up: common <- image <- engine <- {api, launcher, registry} <- cli. A folder
// imports only from folders below it, so a change at the bottom never has to know who sits above.
const above = {
  common: ['image', 'engine', 'api', 'launcher', 'registry', 'cli'],
  image: ['engine', 'api', 'launcher', 'registry', 'cli'],
  engine: ['api', 'launcher', 'registry', 'cli'],
  api: ['launcher', 'registry', 'cli'],
  launcher: ['api', 'registry', 'cli'],
  registry: ['api', 'launcher', 'cli'],
};
const layerRules = Object.entries(above).map(([layer, banned]) => ({
  files: [`src/${layer}/**/*.ts`],
  rules: {
    'no-restricted-imports': [
      'error',
      {
        patterns: banned.map((b) => ({
          group: [`../${b}/*`],
          message: `src/${layer} sits below src/${b}: move what both need down (docs/ARCHITECTURE.md, "Layers").`,
        })),
      },
    ],
  },
}));

export default tseslint.config(
  { ignores: ['dist/', 'dist-examples/', 'build/', 'node_modules/', '.tools/'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    languageOptions: {
      globals: {
        process: 'readonly',
        console: 'readonly',
        Buffer: 'readonly',
        setTimeout: 'readonly',
        clearTimeout: 'readonly',
        setInterval: 'readonly',
        clearInterval: 'readonly',
        URL: 'readonly',
      },
    },
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_' }],
    },
  },
  {
    // CommonJS programs (test fixtures): require is what they are about.
    files: ['**/*.cjs'],
    languageOptions: {
      sourceType: 'commonjs',
      globals: { require: 'readonly', module: 'writable' },
    },
    rules: { '@typescript-eslint/no-require-imports': 'off' },
  },
  ...layerRules,
);
