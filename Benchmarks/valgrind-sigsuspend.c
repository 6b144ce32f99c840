/* Preloaded under valgrind 3.19 (Debian 12) to run meter-bench at all: its async main goes through
 * libdispatch, which calls sigsuspend with a mask in read-only memory, and valgrind's rt_sigsuspend
 * wrapper writes to the mask, so the process dies before main. This passes a writable copy.
 *
 *   cc -shared -fPIC -o /tmp/sigsuspend.so Benchmarks/valgrind-sigsuspend.c
 *   LD_PRELOAD=/tmp/sigsuspend.so valgrind --tool=callgrind ... ./meter-bench ...
 */
#define _GNU_SOURCE
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

int sigsuspend(const sigset_t *mask) {
    sigset_t copy = *mask;
    return (int)syscall(SYS_rt_sigsuspend, &copy, 8);
}
