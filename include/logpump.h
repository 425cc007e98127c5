/* The log's queue (log.h) on the loop: written at the end of every loop turn that
 * queued something (the before-poll phase), and while the reader has no room, when it
 * has (the descriptor watched for writability, never polled in a loop).  Reports the
 * lines dropped on /metrics (tgbridge_log_lines_dropped_total). */
#ifndef TGB_LOGPUMP_H
#define TGB_LOGPUMP_H
/* After loop_init.  0, or -1 if the loop has no room for the hook. */
int logpump_init(void);
#endif
