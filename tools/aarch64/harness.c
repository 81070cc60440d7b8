/* The portable level of the kernels on the architecture this is built for: inputs from
 * in.bin in the current folder (compare.py inputs), outputs to the file named on the
 * command line, in the order compare.py reads them (tools/aarch64/check.sh). */
#include "kernels.h"
#include "bf16.h"
#include "int8.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#define M 7
#define K 45
#define N 130
#define NX 400001
#define H 40
#define MS 5
/* Words of the packed weights, from the sizes (kernels.h, bf16.h, int8.h layouts). */
#define PANELS(n, w) (((n) + (w) - 1) / (w))
#define BF_WORDS (PANELS(N, 64) * ((K + 1) / 2) * 64)
#define I8_WORDS (PANELS(N, 64) * ((K + 3) / 4 + 2) * 64)
#define GATE_COLS (PANELS(H, 16) * 64)
#define HH_WORDS (GATE_COLS * H)
static void *rd(FILE *f, size_t bytes) { void *p = aligned_alloc(64, (bytes + 63) & ~(size_t)63); if (fread(p, 1, bytes, f) != bytes) { fprintf(stderr, "short read\n"); exit(2); } return p; }
static void wr(FILE *f, const void *p, size_t bytes) { fwrite(p, 1, bytes, f); }
int main(int argc, char **argv) {
    if (argc != 2) { fprintf(stderr, "usage: harness OUT\n"); return 2; }
    FILE *f = fopen("in.bin", "rb"), *o = fopen(argv[1], "wb");
    if (f == NULL || o == NULL) { perror("harness"); return 2; }
    float *A = rd(f, 4 * M * K), *BP = rd(f, 4 * (size_t)PANELS(N, 64) * 64 * K), *G0 = rd(f, 4 * M * N);
    double *Ad = rd(f, 8 * M * K), *BPd = rd(f, 8 * (size_t)PANELS(N, 32) * 32 * K), *G0d = rd(f, 8 * M * N);
    uint32_t *bf = rd(f, 4 * BF_WORDS), *i8 = rd(f, 4 * I8_WORDS);
    float *x = rd(f, 4 * NX); double *xd = rd(f, 8 * NX);
    float *hp = rd(f, 4 * HH_WORDS), *bias = rd(f, 4 * GATE_COLS), *Gs = rd(f, 4 * MS * GATE_COLS);
    float *Cs = rd(f, 4 * MS * H), *Hp = rd(f, 4 * MS * H);
    float G[M * N]; double Gd[M * N];
    for (int beta = 0; beta < 2; beta++) {
        memcpy(G, G0, sizeof G); fl_matmul_f(FL_PORTABLE, beta, M, N, K, A, K, BP, G, N); wr(o, G, sizeof G);
        memcpy(Gd, G0d, sizeof Gd); fl_matmul_d(FL_PORTABLE, beta, M, N, K, Ad, K, BPd, Gd, N); wr(o, Gd, sizeof Gd);
        memcpy(G, G0, sizeof G); fl_matmul_bf(FL_PORTABLE, beta, M, N, K, A, K, bf, G, N); wr(o, G, sizeof G);
        memcpy(G, G0, sizeof G); fl_matmul_i8(FL_PORTABLE, beta, M, N, K, A, K, i8, G, N); wr(o, G, sizeof G);
    }
    float *y = malloc(4 * NX); double *yd = malloc(8 * NX);
    for (int s = 0; s < 2; s++) {
        fl_act_f(FL_PORTABLE, NX, x, y, s); wr(o, y, 4 * NX);
        fl_act_d(FL_PORTABLE, NX, xd, yd, s); wr(o, yd, 8 * NX);
    }
    float Hout[MS * H];
    fl_lstm_step_f(FL_PORTABLE, MS, H, H, Hp, H, hp, Gs, GATE_COLS, bias, Cs, H, Hout, H, 0,
                   PANELS(H, 16), 0);
    wr(o, Cs, 4 * MS * H); wr(o, Hout, 4 * MS * H); wr(o, Gs, 4 * MS * GATE_COLS);
    fclose(o);
    printf("done\n");
    return 0;
}
