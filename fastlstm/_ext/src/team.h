/* How many threads a parallel region gets, and how its threads wait.
 *
 * A recurrence meets at a barrier (or a step counter) every timestep, so a
 * thread that is not running stalls the whole team: on a shared machine (a
 * busy neighbour process, other workers, a BLAS pool spinning in the same
 * process) two threads can be slower than one.  Each region started through
 * fl_team_begin measures, at most every FL_SAMPLE_NS, how long each of its
 * threads was off the CPU (the region's wall time less the thread's CPU time:
 * the waits here spin or yield, they never sleep, so that time is time spent
 * waiting to start or to run).  Over a window of FL_WINDOW_NS of measured regions it estimates the
 * team's speed against one thread, and when a smaller team would do better it
 * caps the team at the CPUs the threads actually got; the cap holds for a
 * backoff period (doubling while probes at the full count stay contended),
 * then the full count is tried again.  Like MKL_DYNAMIC, fl_dynamic = 0 turns
 * this off.
 */
#ifndef FASTLSTM_TEAM_H
#define FASTLSTM_TEAM_H
#include <sched.h>
#include <time.h>
#include "omp_compat.h"
#include "blas_share.h"

#define FL_SAMPLE_NS 200000LL          /* measure a region at most every 0.2 ms */
#define FL_WINDOW_NS 4000000LL         /* judge over 4 ms of measured regions */
#define FL_BACKOFF_MIN_NS 50000000LL   /* a cap holds 50 ms at first... */
#define FL_BACKOFF_MAX_NS 2000000000LL /* ...doubling up to 2 s while contended */
#define FL_FIT_CPUS 1                  /* flags: no team larger than the usable CPUs */
#define FL_DYNAMIC 2                   /* flags: the contention cap applies */
#define FL_SPINS 500                   /* PAUSEs before a waiting thread yields */

static inline long long fl_now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static inline long long fl_cpu_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static inline void fl_relax(int *spins)
{
    if (++*spins < FL_SPINS) {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
    } else {
        sched_yield(); /* lets a descheduled partner run on this CPU */
    }
}

/* A barrier of the region's team (a generation count): never sleeps, so that
 * the time a thread waits is not mistaken for time taken from it. */
typedef struct {
    int arrived;
    int gen;
} fl_barrier;

static inline void fl_barrier_wait(fl_barrier *b, int team)
{
    int gen, spins = 0;
    if (team <= 1)
        return;
    gen = __atomic_load_n(&b->gen, __ATOMIC_ACQUIRE);
    if (__atomic_add_fetch(&b->arrived, 1, __ATOMIC_ACQ_REL) == team) {
        __atomic_store_n(&b->arrived, 0, __ATOMIC_RELAXED);
        __atomic_fetch_add(&b->gen, 1, __ATOMIC_RELEASE);
        return;
    }
    while (__atomic_load_n(&b->gen, __ATOMIC_ACQUIRE) == gen)
        fl_relax(&spins);
}

/* One region: its barrier and, when measured, its threads' times (ns). */
typedef struct {
    fl_barrier bar;
    int synced;    /* the threads meet every timestep (else once per chunk or call) */
    int measure;
    int ran;       /* threads that ran it (OpenMP may give fewer than asked) */
    int team;      /* threads asked of OpenMP */
    long long t0;  /* when the caller started it */
    long long lost_sum, lost_max, wall_max, cpu_sum;
} fl_region;

/* The process's controller; races between Python threads lose samples, nothing else. */
static int fl_dynamic = 1;
static int fl_cpus = 0;               /* usable CPUs (affinity, quota); 0: unknown */
static int fl_cap = 0;                /* team cap while contended; 0: none */
static long long fl_cap_until = 0;
static long long fl_backoff = FL_BACKOFF_MIN_NS;
static long long fl_last_sample = 0;
/* The window, in microseconds of wall time: sum of wall, of team x wall, of
 * speed (thousandths of one thread) x wall, and of CPU time. */
static long long fl_w_wall = 0, fl_w_team = 0, fl_w_speed = 0, fl_w_cpu = 0;
static int fl_w_probe = 0;            /* the window holds probes at the full count */
static long long fl_n_windows = 0, fl_n_capped = 0;

static inline long long fl_ld(const long long *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static inline void fl_st(long long *p, long long v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }

static inline void fl_atomic_max(long long *p, long long v)
{
    long long old = __atomic_load_n(p, __ATOMIC_RELAXED);
    while (v > old && !__atomic_compare_exchange_n(p, &old, v, 1, __ATOMIC_RELAXED,
                                                   __ATOMIC_RELAXED)) {
    }
}

static inline void fl_window_clear(void)
{
    fl_st(&fl_w_wall, 0);
    fl_st(&fl_w_team, 0);
    fl_st(&fl_w_speed, 0);
    fl_st(&fl_w_cpu, 0);
}

/* The team a region asking for `threads` gets now; *probe: it tries the full
 * count again after a cap expired. */
static inline int fl_team_now(int threads, long long now, int *probe, int flags)
{
    int team = threads, cap;
    *probe = 0;
    if (team <= 1)
        return 1;
    /* More threads than CPUs only wait on one another at every step. */
    if ((flags & FL_FIT_CPUS) && fl_cpus > 0 && team > fl_cpus)
        team = fl_cpus;
    if (!(flags & FL_DYNAMIC))
        return team;
    cap = __atomic_load_n(&fl_cap, __ATOMIC_RELAXED);
    if (fl_dynamic && cap > 0 && team > cap) {
        if (now < fl_ld(&fl_cap_until))
            team = cap;
        else
            *probe = 1;
    }
    return team;
}

static inline int fl_team_begin(fl_region *r, int threads, int synced, int flags)
{
    long long now = fl_now_ns();
    int probe;
    int team = fl_team_now(threads, now, &probe, flags);
    /* BLAS threads spinning after a NumPy call would share the team's CPUs */
    fl_blas_park();
    r->bar.arrived = r->bar.gen = 0;
    r->synced = synced;
    r->ran = 0;
    r->team = team;
    r->t0 = now;
    r->lost_sum = r->lost_max = r->wall_max = r->cpu_sum = 0;
    /* A probe's window holds probes only (the first one clears it). */
    if (probe && !__atomic_exchange_n(&fl_w_probe, 1, __ATOMIC_RELAXED))
        fl_window_clear();
    r->measure = fl_dynamic && (flags & FL_DYNAMIC) && team > 1 &&
                 (probe || now - fl_ld(&fl_last_sample) >= FL_SAMPLE_NS);
    if (r->measure)
        fl_st(&fl_last_sample, now);
    return team;
}

/* A thread's CPU clock at the start of its share (0 when the region is not measured). */
static inline long long fl_start_cpu(const fl_region *r) { return r->measure ? fl_cpu_ns() : 0; }

/* A thread's wall time runs from the region's start: a thread the OS starts late
 * (descheduled, or asleep while its partner spins for it) lost that time too. */
static inline void fl_thread_stop(fl_region *r, long long cpu0)
{
    long long wall, cpu, lost;
    if (!r->measure)
        return;
    cpu = fl_cpu_ns() - cpu0;
    wall = fl_now_ns() - r->t0;
    lost = wall > cpu ? wall - cpu : 0;
    __atomic_fetch_add(&r->ran, 1, __ATOMIC_RELAXED);
    __atomic_fetch_add(&r->lost_sum, lost, __ATOMIC_RELAXED);
    __atomic_fetch_add(&r->cpu_sum, cpu, __ATOMIC_RELAXED);
    fl_atomic_max(&r->lost_max, lost);
    fl_atomic_max(&r->wall_max, wall);
}

/* The decision over a window: the team's estimated speed against one thread
 * is team x progress, progress being the share of time every thread of a
 * synced team runs at once (1 - the sum of the shares lost) or, for a team
 * that meets once per chunk or call, the slowest thread's share.  A smaller
 * team of the CPUs the threads got (their CPU time over the wall time) wins
 * when it beats that by 10%.  Arguments in thousandths; returns the new cap,
 * or 0 to keep the team. */
static inline int fl_decide(long long team_milli, long long speed_milli, long long cpus_milli)
{
    long long team = team_milli / 1000, cap;
    if (team < 2)
        return 0;
    cap = (cpus_milli + 200) / 1000; /* a thread that got 80% of a CPU counts */
    if (cap < 1)
        cap = 1;
    if (cap > team - 1)
        cap = team - 1;
    return cap * 1000 * 10 > speed_milli * 11 ? (int)cap : 0;
}

static inline void fl_team_end(fl_region *r)
{
    long long wall = r->wall_max, lost, speed, w_wall, w_team, w_speed, w_cpu, now;
    int cap, new_cap, probe;
    fl_blas_team_ended(r->team);
    if (!r->measure || wall < 1000 || r->ran < 1)
        return;
    lost = r->synced ? r->lost_sum : r->lost_max;
    if (lost > wall)
        lost = wall;
    speed = (long long)r->ran * 1000 * (wall - lost) / wall;
    __atomic_fetch_add(&fl_w_speed, speed * (wall / 1000), __ATOMIC_RELAXED);
    __atomic_fetch_add(&fl_w_team, (long long)r->ran * (wall / 1000), __ATOMIC_RELAXED);
    __atomic_fetch_add(&fl_w_cpu, r->cpu_sum / 1000, __ATOMIC_RELAXED);
    w_wall = __atomic_add_fetch(&fl_w_wall, wall / 1000, __ATOMIC_RELAXED);
    if (w_wall < FL_WINDOW_NS / 1000)
        return;
    /* The window is full: one thread judges it (samples racing in are lost). */
    if (!__atomic_compare_exchange_n(&fl_w_wall, &w_wall, 0, 0, __ATOMIC_RELAXED,
                                     __ATOMIC_RELAXED))
        return;
    w_team = __atomic_exchange_n(&fl_w_team, 0, __ATOMIC_RELAXED);
    w_speed = __atomic_exchange_n(&fl_w_speed, 0, __ATOMIC_RELAXED);
    w_cpu = __atomic_exchange_n(&fl_w_cpu, 0, __ATOMIC_RELAXED);
    probe = __atomic_exchange_n(&fl_w_probe, 0, __ATOMIC_RELAXED);
    new_cap = fl_decide(w_team * 1000 / w_wall, w_speed / w_wall, w_cpu * 1000 / w_wall);
    now = fl_now_ns();
    cap = __atomic_load_n(&fl_cap, __ATOMIC_RELAXED);
    __atomic_fetch_add(&fl_n_windows, 1, __ATOMIC_RELAXED);
    if (new_cap > 0) {
        __atomic_fetch_add(&fl_n_capped, 1, __ATOMIC_RELAXED);
        if (probe) { /* still contended at the full count: wait longer next time */
            long long b = fl_ld(&fl_backoff) * 2;
            fl_st(&fl_backoff, b > FL_BACKOFF_MAX_NS ? FL_BACKOFF_MAX_NS : b);
        }
        if (cap == 0 || probe || new_cap < cap)
            __atomic_store_n(&fl_cap, new_cap, __ATOMIC_RELAXED);
        if (cap == 0 || probe)
            fl_st(&fl_cap_until, now + fl_ld(&fl_backoff));
    } else if (probe) { /* the full count ran well again: drop the cap */
        __atomic_store_n(&fl_cap, 0, __ATOMIC_RELAXED);
        fl_st(&fl_backoff, FL_BACKOFF_MIN_NS);
    }
}

static inline void fl_team_reset(void)
{
    __atomic_store_n(&fl_cap, 0, __ATOMIC_RELAXED);
    fl_st(&fl_cap_until, 0);
    fl_st(&fl_backoff, FL_BACKOFF_MIN_NS);
    fl_window_clear();
    __atomic_store_n(&fl_w_probe, 0, __ATOMIC_RELAXED);
    fl_st(&fl_n_windows, 0);
    fl_st(&fl_n_capped, 0);
}
#endif
