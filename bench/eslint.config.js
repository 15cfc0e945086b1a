// bench/ holds plain ESM scripts (.mjs) that no tsconfig includes: lint them with the project's
// rules but without type information. Everything else under bench/ gets the root config as is.
import tseslint from 'typescript-eslint';
import root from '../eslint.config.js';

export default tseslint.config(
  ...root,
  { files: ['**/*.mjs'], ...tseslint.configs.disableTypeChecked },
  {
    files: ['**/*.mjs'],
    languageOptions: {
      globals: Object.fromEntries(
        [
          'console',
          'process',
          'performance',
          'fetch',
          'setTimeout',
          'clearTimeout',
          'setImmediate',
          'Buffer',
          'URL',
        ].map((g) => [g, 'readonly']),
      ),
    },
  },
);
