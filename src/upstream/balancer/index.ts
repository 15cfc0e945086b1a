import type { Algorithm, Picker, PickerOptions, Target } from './picker.js';
import { RoundRobinPicker } from './round-robin.js';

/** Builds the picker of an algorithm over the ready targets. Called once per membership change. */
export function buildPicker<T extends Target>(algorithm: Algorithm, targets: readonly T[], opts: PickerOptions): Picker<T> {
  switch (algorithm) {
    case 'round-robin':
      return new RoundRobinPicker(targets, opts);
    default:
      throw new Error(`algorithm ${algorithm} is not available`);
  }
}
