/* The log, for unit tests: each line is counted by level and the last one kept. */
#include "stubs.h"
#include <stdarg.h>
#include <stdio.h>

unsigned fake_log_lines[LOG_DEBUG + 1];
char fake_log_last[1024];

void log_msg(enum log_level level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(fake_log_last, sizeof fake_log_last, fmt, ap);
    va_end(ap);
    if (level <= LOG_DEBUG)
        fake_log_lines[level]++;
}

void fake_log_reset(void)
{
    for (size_t i = 0; i <= LOG_DEBUG; i++)
        fake_log_lines[i] = 0;
    fake_log_last[0] = '\0';
}
