/* OpenBLAS's parallel jobs on threads that step aside for fastlstm.
 *
 * OpenBLAS (pthreads build) keeps worker threads that busy-wait for about
 * 0.1 s after each threaded call (2^28 TSC ticks, read once at load).  On a
 * machine with as many cores as threads, a fastlstm call right after a NumPy
 * matmul then shares its cores with a spinning BLAS thread and takes up to
 * twice its time (docs/threads.md), and nothing outside OpenBLAS can make its
 * threads sleep.  OpenBLAS 0.3.28 added openblas_set_threads_callback_function:
 * the library hands each call's jobs to the caller's threads.  fl_blas_run is
 * that callback.  It runs job 0 on the calling thread and the others on a
 * pool of this module's own threads, which wait for the next call as
 * OpenBLAS's do (spin up to FL_BLAS_SPIN_NS, then sleep), so that back-to-back
 * NumPy calls keep hot threads; but they go to sleep at once when a fastlstm
 * team starts (fl_blas_park), so a fastlstm call never shares its cores with
 * them.  (OpenMP's team cannot serve instead: its sleeping threads wake late
 * on an idle virtual CPU, and OpenBLAS's jobs, which wait on each other with
 * bare NOPs, then lose milliseconds.)
 *
 * The jobs of one call wait on each other (a threaded GEMM's threads exchange
 * packed panels), so every job gets a thread of its own.  Jobs use OpenBLAS's
 * per-position buffers (blas_thread_buffer[thread_num]), so calls from two
 * threads are serialised by a lock, as OpenBLAS's queue serialises them. */
#ifndef FASTLSTM_BLAS_SHARE_H
#define FASTLSTM_BLAS_SHARE_H
#include <pthread.h>
#include <sched.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "omp_compat.h"

/* OpenBLAS's default wait: 2^28 ticks, 0.1 s at 2.7 GHz. */
#define FL_BLAS_SPIN_NS 100000000LL
#define FL_BLAS_MAX_WORKERS 1024

typedef void (*fl_blas_dojob)(int thread_num, void *jobdata, int dojob_data);

typedef struct {
    pthread_mutex_t lock;       /* one call at a time */
    pthread_mutex_t sleep_lock;
    pthread_cond_t wake;
    int workers;                /* threads started (job positions 1..workers) */
    int sleepers;               /* workers inside the cond wait */
    unsigned long long ticket;  /* call number << 20 | numjobs: workers wait
                                   for it to change; a worker of position
                                   below numjobs then runs, the others not */
    unsigned park;              /* fastlstm team starts: spinners go to sleep */
    int done;                   /* jobs finished in this call */
    fl_blas_dojob dojob;        /* the call (read by workers after ticket) */
    char *data;
    size_t size;
    int arg;
    long long calls, pooled;    /* calls of 2+ jobs; of which on the pool */
    long long teamed;           /* of which on the OpenMP team, still hot */
} fl_blas_pool_t;

static fl_blas_pool_t fl_blas_pool = {
    PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER,
    0, 0, 0, 0, 0, NULL, NULL, 0, 0, 0, 0, 0};
static __thread int fl_blas_in_worker = 0;

/* A BLAS call right after a fastlstm call (a NumPy head after a decoder step)
 * finds the pool asleep (parked by the step: a wake-up on an idle virtual CPU
 * costs tens to hundreds of us) while OpenMP's team, which ran the step, still
 * spins in its dock on the same CPUs.  Such a call runs its jobs on that team
 * instead: hot threads, and no spinner beside them.  fl_blas_hot_ns is how long
 * after a team ended its threads surely still spin (0: never, where the user's
 * OpenMP wait policy may put them to sleep at once), fl_blas_hot_shared_ns the
 * same once several threads have started teams (libgomp then spins its threads
 * far less: more threads than CPUs); the end time is per calling thread, as
 * OpenMP's hot team belongs to the thread that started it. */
static long long fl_blas_hot_ns = 0;
static long long fl_blas_hot_shared_ns = 0;
static int fl_blas_team_threads = 0;         /* threads that have started teams */
static __thread long long fl_blas_team_end = 0;
static __thread int fl_blas_team_size = 0;
static __thread int fl_blas_team_counted = 0;

static inline long long fl_blas_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Called when a fastlstm team starts: the pool's spinning threads sleep. */
static inline void fl_blas_park(void)
{
    if (__atomic_load_n(&fl_blas_pool.workers, __ATOMIC_RELAXED))
        __atomic_add_fetch(&fl_blas_pool.park, 1, __ATOMIC_RELAXED);
}

/* A worker's position, the ticket before the call it was started for (it
 * may first run after that call was posted), and whether it sleeps at once
 * (started ahead of any call, by fl_blas_reserve). */
typedef struct {
    int pos;
    unsigned long long seen;
    int asleep;
} fl_blas_start_t;

static void *fl_blas_worker(void *arg)
{
    fl_blas_pool_t *p = &fl_blas_pool;
    int pos = ((fl_blas_start_t *)arg)->pos;
    unsigned long long seen = ((fl_blas_start_t *)arg)->seen;
    int asleep = ((fl_blas_start_t *)arg)->asleep;
    free(arg);
    fl_blas_in_worker = 1;
    for (;;) {
        /* a park count already "changed": the first wait sleeps after 64 pauses */
        unsigned park = __atomic_load_n(&p->park, __ATOMIC_RELAXED) - (unsigned)asleep;
        asleep = 0;
        long long start = fl_blas_now_ns();
        int spins = 0;
        unsigned long long t;
        while ((t = __atomic_load_n(&p->ticket, __ATOMIC_ACQUIRE)) == seen) {
            fl_pause();
            if (++spins % 64 == 0 &&
                    (__atomic_load_n(&p->park, __ATOMIC_RELAXED) != park ||
                     fl_blas_now_ns() - start > FL_BLAS_SPIN_NS)) {
                pthread_mutex_lock(&p->sleep_lock);
                __atomic_add_fetch(&p->sleepers, 1, __ATOMIC_SEQ_CST);
                while (__atomic_load_n(&p->ticket, __ATOMIC_SEQ_CST) == seen)
                    pthread_cond_wait(&p->wake, &p->sleep_lock);
                __atomic_sub_fetch(&p->sleepers, 1, __ATOMIC_SEQ_CST);
                pthread_mutex_unlock(&p->sleep_lock);
            }
        }
        seen = t;
        if (pos < (int)(t & 0xFFFFF)) {
            p->dojob(pos, p->data + (size_t)pos * p->size, p->arg);
            __atomic_add_fetch(&p->done, 1, __ATOMIC_RELEASE);
        }
    }
    return NULL;
}

/* Jobs 1..numjobs-1 each on a thread of their own that exits after it: for a
 * call the pool cannot take (from one of its own threads, or past its size). */
typedef struct {
    fl_blas_dojob dojob;
    char *data;
    size_t size;
    int arg;
    int index;
} fl_blas_job;

static void *fl_blas_job_thread(void *p)
{
    fl_blas_job *j = (fl_blas_job *)p;
    j->dojob(j->index, j->data + (size_t)j->index * j->size, j->arg);
    return NULL;
}

/* pthread_create, tried `tries` times 1 ms apart; 0 when a thread started. */
static int fl_blas_try_start(pthread_t *tid, void *(*fn)(void *), void *arg, int tries)
{
    pthread_attr_t attr;
    int ok = 0;
    pthread_attr_init(&attr);
    for (int i = 0; i < tries && !ok; i++) {
        if (pthread_create(tid, &attr, fn, arg) == 0) {
            ok = 1;
        } else {
            struct timespec ms = {0, 1000000};
            nanosleep(&ms, NULL);
        }
    }
    pthread_attr_destroy(&attr);
    return ok ? 0 : -1;
}

/* A job that never starts would leave the others waiting for its panels
 * forever, so a thread that cannot be created is retried for a second, then
 * the process stops with a message: a hang would be worse.  The pool's
 * threads are started when routing begins (fl_blas_reserve, which turns
 * routing down instead of failing), so this is reached only by a call of
 * more jobs than OpenBLAS had threads then. */
static void fl_blas_start(pthread_t *tid, void *(*fn)(void *), void *arg)
{
    if (fl_blas_try_start(tid, fn, arg, 1000) != 0) {
        fputs("fastlstm: could not start a thread for a BLAS call\n", stderr);
        abort();
    }
}

/* One more worker, asleep or spinning; 0, or -1 without memory or a thread
 * (after `tries` tries). Called with the pool's lock held. */
static int fl_blas_add_worker(fl_blas_pool_t *p, int asleep, int tries)
{
    pthread_t tid;
    fl_blas_start_t *w = (fl_blas_start_t *)malloc(sizeof(fl_blas_start_t));
    if (w == NULL)
        return -1;
    w->pos = p->workers + 1;
    w->seen = p->ticket;
    w->asleep = asleep;
    if (fl_blas_try_start(&tid, fl_blas_worker, w, tries) != 0) {
        free(w);
        return -1;
    }
    pthread_detach(tid);
    __atomic_add_fetch(&p->workers, 1, __ATOMIC_RELAXED);
    return 0;
}

/* Start sleeping workers until the pool has `workers`, so that calls of up to
 * workers + 1 jobs start none; 0, or -1 when a thread or its memory could not
 * be had (the caller then leaves OpenBLAS its own threads, which exist). */
static int fl_blas_reserve(int workers)
{
    fl_blas_pool_t *p = &fl_blas_pool;
    int rc = 0;
    if (workers > FL_BLAS_MAX_WORKERS)
        workers = FL_BLAS_MAX_WORKERS;
    pthread_mutex_lock(&p->lock);
    while (p->workers < workers && rc == 0)
        rc = fl_blas_add_worker(p, 1, 10);
    pthread_mutex_unlock(&p->lock);
    return rc;
}

static void fl_blas_on_fresh_threads(fl_blas_dojob dojob, int numjobs, size_t size,
                                     char *data, int arg)
{
    pthread_t *tid = (pthread_t *)malloc(sizeof(pthread_t) * (size_t)numjobs);
    fl_blas_job *jobs = (fl_blas_job *)malloc(sizeof(fl_blas_job) * (size_t)numjobs);
    if (tid == NULL || jobs == NULL) {
        fputs("fastlstm: no memory to run a BLAS call's threads\n", stderr);
        abort();
    }
    for (int i = 1; i < numjobs; i++) {
        jobs[i].dojob = dojob;
        jobs[i].data = data;
        jobs[i].size = size;
        jobs[i].arg = arg;
        jobs[i].index = i;
        fl_blas_start(&tid[i], fl_blas_job_thread, &jobs[i]);
    }
    dojob(0, data, arg);
    for (int i = 1; i < numjobs; i++)
        pthread_join(tid[i], NULL);
    free(tid);
    free(jobs);
}

/* Sets the window (ns), or with `shared` the window once several threads have
 * started teams, when ns >= 0; returns the value before. */
static inline long long fl_blas_hot_window(long long ns, int shared)
{
    long long *w = shared ? &fl_blas_hot_shared_ns : &fl_blas_hot_ns;
    if (ns < 0)
        return __atomic_load_n(w, __ATOMIC_RELAXED);
    return __atomic_exchange_n(w, ns, __ATOMIC_RELAXED);
}

/* The shortest time of one PAUSE here (ns; best of three runs of 2000), from
 * which the time OpenMP's idle threads spin is estimated. */
static inline double fl_pause_ns(void)
{
    double best = 1e9;
    for (int run = 0; run < 3; run++) {
        long long t0 = fl_blas_now_ns();
        for (int i = 0; i < 2000; i++)
            fl_pause();
        double per = (double)(fl_blas_now_ns() - t0) / 2000.0;
        if (per < best)
            best = per;
    }
    return best;
}

/* A fastlstm team of `team` threads started by this thread has just ended. */
static inline void fl_blas_team_ended(int team)
{
    if (!fl_blas_team_counted) {
        fl_blas_team_counted = 1;
        __atomic_add_fetch(&fl_blas_team_threads, 1, __ATOMIC_RELAXED);
    }
    if (__atomic_load_n(&fl_blas_hot_ns, __ATOMIC_RELAXED) > 0) {
        fl_blas_team_end = fl_blas_now_ns();
        fl_blas_team_size = team;
    }
}

/* The jobs on OpenMP's team when this thread's team of numjobs threads ended
 * within fl_blas_hot_ns (and no region encloses this call); 1 if they ran.
 * Every job needs a thread of its own, so a team OpenMP gives short runs none
 * of them (all its threads see the same count) and the caller takes the pool. */
static int fl_blas_on_team(fl_blas_dojob dojob, int numjobs, size_t size, char *data,
                           int arg)
{
#ifdef _OPENMP
    long long hot = __atomic_load_n(__atomic_load_n(&fl_blas_team_threads, __ATOMIC_RELAXED) > 1
                                    ? &fl_blas_hot_shared_ns : &fl_blas_hot_ns,
                                    __ATOMIC_RELAXED);
    int ran = 0;
    if (hot <= 0 || fl_blas_team_size != numjobs || fl_forked_serial || omp_in_parallel() ||
            fl_blas_now_ns() - fl_blas_team_end > hot)
        return 0;
    #pragma omp parallel num_threads(numjobs)
    {
        if (omp_get_num_threads() == numjobs) {
            int t = omp_get_thread_num();
            dojob(t, data + (size_t)t * size, arg);
            if (t == 0)
                ran = 1;
        }
    }
    if (ran)
        fl_blas_team_ended(numjobs);  /* the team spins again after this region */
    return ran;
#else
    (void)dojob; (void)numjobs; (void)size; (void)data; (void)arg;
    return 0;
#endif
}

static void fl_blas_run(int sync, fl_blas_dojob dojob, int numjobs, size_t size,
                        void *jobdata, int arg)
{
    fl_blas_pool_t *p = &fl_blas_pool;
    char *data = (char *)jobdata;
    (void)sync;  /* OpenBLAS passes 1: it returns once the jobs are done */
    if (numjobs <= 1) {
        if (numjobs == 1)
            dojob(0, data, arg);
        return;
    }
    __atomic_add_fetch(&p->calls, 1, __ATOMIC_RELAXED);
    if (fl_blas_in_worker || numjobs - 1 > FL_BLAS_MAX_WORKERS) {
        fl_blas_on_fresh_threads(dojob, numjobs, size, data, arg);
        return;
    }
    pthread_mutex_lock(&p->lock);
    if (fl_blas_on_team(dojob, numjobs, size, data, arg)) {
        p->teamed++;
        pthread_mutex_unlock(&p->lock);
        return;
    }
    p->pooled++;
    while (p->workers < numjobs - 1) {
        if (fl_blas_add_worker(p, 0, 1000) != 0) {  /* see fl_blas_start */
            fputs("fastlstm: could not start a thread for a BLAS call\n", stderr);
            abort();
        }
    }
    p->dojob = dojob;
    p->data = data;
    p->size = size;
    p->arg = arg;
    __atomic_store_n(&p->done, 0, __ATOMIC_RELAXED);
    /* Dekker with the worker's sleepers++ / ticket check: one of the two sees
     * the other's store, so no worker sleeps through a call.  Workers of
     * positions past numjobs do nothing and are not waited for. */
    __atomic_store_n(&p->ticket, ((p->ticket >> 20) + 1) << 20 | (unsigned long long)numjobs,
                     __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&p->sleepers, __ATOMIC_SEQ_CST)) {
        pthread_mutex_lock(&p->sleep_lock);
        pthread_cond_broadcast(&p->wake);
        pthread_mutex_unlock(&p->sleep_lock);
    }
    dojob(0, data, arg);
    /* The workers have CPUs of their own unless the machine is shared: spin
     * briefly, then let a descheduled worker run. */
    int spins = 0;
    while (__atomic_load_n(&p->done, __ATOMIC_ACQUIRE) < numjobs - 1) {
        if (++spins < 2000)
            fl_pause();
        else
            sched_yield();
    }
    pthread_mutex_unlock(&p->lock);
}

/* Route one library's jobs here (on) or back to its own threads (off), through
 * its openblas_set_threads_callback_function (under the library's symbol prefix
 * and suffix). */
typedef void (*fl_blas_setter)(void *callback);
static void fl_blas_route(void *setter_address, int on)
{
    ((fl_blas_setter)setter_address)(on ? (void *)fl_blas_run : NULL);
}

/* A forked child has none of the pool's threads (and maybe a lock another
 * thread held): it starts an empty pool. */
static void fl_blas_after_fork_child(void)
{
    fl_blas_pool_t *p = &fl_blas_pool;
    pthread_mutex_init(&p->lock, NULL);
    pthread_mutex_init(&p->sleep_lock, NULL);
    pthread_cond_init(&p->wake, NULL);
    p->workers = p->sleepers = 0;
    fl_blas_in_worker = 0;
    fl_blas_team_size = 0;
    fl_blas_team_threads = fl_blas_team_counted;  /* the child's one thread */
}

static int fl_blas_register_fork_handler(void)
{
    return pthread_atfork(NULL, NULL, fl_blas_after_fork_child);
}
#endif
