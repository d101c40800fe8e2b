/** Time as the client sees it, in seconds (injectable: the test vectors use a scripted one). */
export interface Clock {
  /** Wall-clock time in seconds since the epoch (compared with the flag's times). */
  now(): number;
  /** Wait `seconds`. */
  sleep(seconds: number): Promise<void>;
}

/** The real clock. */
export const systemClock: Clock = {
  now: () => Date.now() / 1000,
  sleep: (seconds) => new Promise((resolve) => setTimeout(resolve, Math.max(0, seconds) * 1000)),
};
