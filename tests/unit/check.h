/* check.h: the few assertions the C unit tests share.
 * A failed CHECK prints file:line and the expression, counts the failure,
 * and the test goes on; check_exit() returns the process exit status. */
#ifndef MAILFS_CHECK_H
#define MAILFS_CHECK_H

#include <stdio.h>
#include <string.h>

static int check_failures;
static int check_count;

#define CHECK(expr)                                                        \
	do {                                                               \
		check_count++;                                             \
		if (!(expr)) {                                             \
			check_failures++;                                  \
			fprintf(stderr, "%s:%d: CHECK failed: %s\n",        \
				__FILE__, __LINE__, #expr);                \
		}                                                          \
	} while (0)

#define CHECK_STR(got, want)                                               \
	do {                                                               \
		const char *g_ = (got), *w_ = (want);                      \
		check_count++;                                             \
		if (g_ == NULL || w_ == NULL ? g_ != w_ : strcmp(g_, w_)) { \
			check_failures++;                                  \
			fprintf(stderr, "%s:%d: got \"%s\", want \"%s\"\n", \
				__FILE__, __LINE__, g_ ? g_ : "(null)",    \
				w_ ? w_ : "(null)");                       \
		}                                                          \
	} while (0)

static inline int check_exit(void)
{
	printf("%d checks, %d failed\n", check_count, check_failures);
	return check_failures ? 1 : 0;
}

#endif
