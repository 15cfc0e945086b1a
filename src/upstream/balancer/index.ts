import { LeastConnectionsPicker } from './least-connections.js';
import { MaglevPicker } from './maglev.js';
import type { Algorithm, Picker, PickerOptions, Target } from './picker.js';
import { PowerOfTwoPicker } from './power-of-two.js';
import { RandomPicker } from './random.js';
import { RingHashPicker } from './ring-hash.js';
import { RoundRobinPicker } from './round-robin.js';

/** Builds the picker of an algorithm over the ready targets. Called once per membership change. */
export function buildPicker<T extends Target>(
  algorithm: Algorithm,
  targets: readonly T[],
  opts: PickerOptions,
): Picker<T> {
  switch (algorithm) {
    case 'round-robin':
      return new RoundRobinPicker(targets, opts);
    case 'least-connections':
      return new LeastConnectionsPicker(targets, opts);
    case 'power-of-two':
      return new PowerOfTwoPicker(targets, opts);
    case 'random':
      return new RandomPicker(targets, opts);
    case 'maglev':
      return new MaglevPicker(targets, opts);
    case 'ring-hash':
      return new RingHashPicker(targets, opts);
  }
}
