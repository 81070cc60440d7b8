/* OpenMP when the build has it, one thread otherwise: kernels call these
 * functions unconditionally and the serial build still links. */
#ifndef FASTLSTM_OMP_COMPAT_H
#define FASTLSTM_OMP_COMPAT_H
#include <stdlib.h>
#ifdef _OPENMP
#include <omp.h>
#define FASTLSTM_OPENMP 1
#else
#define FASTLSTM_OPENMP 0
static inline int omp_get_max_threads(void) { return 1; }
static inline int omp_get_thread_num(void) { return 0; }
static inline int omp_get_num_threads(void) { return 1; }
static inline int omp_get_num_procs(void) { return 1; }
#endif

/* The CPUs in OpenMP's place list (OMP_PLACES, OMP_PROC_BIND, GOMP_CPU_AFFINITY),
 * 0 without one.  With binding, the runtime pins the initial thread to the first
 * place when it loads: that thread's affinity mask then shows one place, not the
 * CPUs the process may use. */
static inline int fl_omp_place_cpus(void)
{
#if defined(_OPENMP) && _OPENMP >= 201511
    enum { FL_MAX_CPU = 1 << 16 };
    static unsigned char seen[FL_MAX_CPU / 8];
    int places = omp_get_num_places(), count = 0;
    for (int i = 0; i < (int)sizeof(seen); i++)
        seen[i] = 0;
    for (int p = 0; p < places; p++) {
        int n = omp_get_place_num_procs(p);
        if (n <= 0)
            continue;
        int *ids = (int *)malloc(sizeof(int) * (size_t)n);
        if (ids == NULL)
            return 0;
        omp_get_place_proc_ids(p, ids);
        for (int k = 0; k < n; k++) {
            int id = ids[k];
            if (id >= 0 && id < FL_MAX_CPU && !(seen[id >> 3] & (1u << (id & 7)))) {
                seen[id >> 3] |= (unsigned char)(1u << (id & 7));
                count++;
            }
        }
        free(ids);
    }
    return count;
#else
    return 0;
#endif
}

/* OMP_THREAD_LIMIT: no team is larger, whatever it asks for. */
static inline int fl_omp_thread_limit(void)
{
#ifdef _OPENMP
    return omp_get_thread_limit();
#else
    return 1;
#endif
}

/* Fork: GNU OpenMP cannot run a parallel region in a child forked after the
 * parent started a team (GCC bug 60035: the child waits forever for threads
 * that fork did not copy).  fl_team_started is set when the kernels start a
 * team of two threads or more; a child handler registered with pthread_atfork
 * turns it into fl_forked_serial, and the schedule then runs everything on the
 * calling thread, without a region.  A child forked before any team keeps its
 * threads. */
#include <pthread.h>
static int fl_team_started = 0;
static int fl_forked_serial = 0;
static void fl_after_fork_child(void)
{
    if (__atomic_load_n(&fl_team_started, __ATOMIC_RELAXED))
        fl_forked_serial = 1;
}
static inline void fl_note_team(int threads)
{
    if (threads > 1 && !__atomic_load_n(&fl_team_started, __ATOMIC_RELAXED))
        __atomic_store_n(&fl_team_started, 1, __ATOMIC_RELAXED);
}
static int fl_register_fork_handler(void)
{
    return pthread_atfork(NULL, NULL, fl_after_fork_child);
}

/* A step counter for threads that share a direction in split mode: each
 * thread adds 1 when its part of a step's h is written, and waits until all
 * n parts of step s - 1 are there (count >= n * s) before reading the
 * others'.  Cheaper than an OpenMP barrier (one atomic add and a load per
 * step).  The wait spins briefly (with PAUSE), then yields the CPU; callers
 * use it only when every thread can have a CPU of its own (fl_atomic_add
 * keeps the count of threads in such regions), since a thread that spins
 * while the one it waits for is not running wastes its time slice. */
#include <sched.h>
static inline void fl_pause(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}
static inline int fl_atomic_add(int *value, int n)
{
    return __atomic_add_fetch(value, n, __ATOMIC_ACQ_REL);
}
static inline void fl_count_signal(int *count)
{
    __atomic_fetch_add(count, 1, __ATOMIC_RELEASE);
}
static inline void fl_count_wait(const int *count, int target)
{
    int spins = 0;
    while (__atomic_load_n(count, __ATOMIC_ACQUIRE) < target) {
        if (++spins < 500) {
            fl_pause();
        } else {
            sched_yield();
        }
    }
}
#endif
