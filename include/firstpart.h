/* Time to first part: a caller waiting for the first part of a stream should not wait
 * for the rest of the gateway's batch to be read.  Front ends say what happened;
 * whoever reads the batches (upstream.c) decides what to do about it, in its own
 * before-poll hook.  Counters rather than flags, so that no one consumes a signal
 * meant for another. */
#ifndef TGB_FIRSTPART_H
#define TGB_FIRSTPART_H
#include <stdint.h>

/* For front ends: a caller's first part of a stream is queued, not written yet. */
void firstpart_queued(void);
/* For front ends: bytes went out to a local caller. */
void firstpart_wrote(void);

/* For the reader: first parts queued so far (compare before and after a frame). */
uint64_t firstpart_queued_total(void);
/* Writes to callers so far. */
uint64_t firstpart_writes_total(void);
/* The reader stopped reading for a first part: returns firstpart_writes_total(), and
 * the next write makes the loop run its before-poll hooks before it waits again
 * (loop_wake), even when it was written from a timer. */
uint64_t firstpart_await(void);
#endif
