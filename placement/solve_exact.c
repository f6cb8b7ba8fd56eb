/* solve_exact.c: the exact joint model (`moerun place --exact`) for small instances.
 *
 * Per layer (layers are independent in the cost model), one MILP over the whole hosting at once,
 * nodes and ranks together, with the replica counts of step A of the ILP (solve_ilp.c) and equal
 * shares:
 *   y[e][r] binary: rank r hosts a replica of e;  sum_r y[e][r] = r_e;  sum_e y[e][r] <= cap
 *   z >= sum_e u_w[e] / r_e * y[e][r]                  every workload w and rank r
 *   t[a][b][r][r'] <= y[a][r], <= y[b][r']               r, r' on one node (r = r' only, unless the
 *                                                        objective has a node term)
 *   minimise z + const - sum pair weight / (r_a r_b) * t
 * which is exactly moe_place_layer_cost() of the resulting plan (the product of two binaries is
 * linearised exactly because its weight is positive and minimised). The MILP is solved to
 * optimality unless the time limit stops it (then a warning and the gap). Tests compare it with
 * brute force. */
#include <glpk.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "placement/place-impl.h"

moe_status_t moe_place_solve_exact(const moe_workload_h *w, int n, const moe_place_options_t *o,
                                   moe_plan_h *out, moe_place_report_t *rep)
{
    moe_status_t status = MOE_STATUS_OK;
    moe_place_layout_t lay;
    MOE_CHECK(moe_place_layout_make(w, n, o, &lay), fail);
    int L = lay.layers, E = lay.experts, R = lay.ranks, G = lay.ranks_per_node, W = n;
    if (o->stay)
        MOE_FAIL(MOE_STATUS_INVALID_ARGUMENT, fail,
                 "place --exact: the joint model is per layer; "
                 "stay residency couples layers (use --solver ilp)");
    if ((long)(E + o->replicas) * R > 256)
        MOE_FAIL(MOE_STATUS_INVALID_ARGUMENT, fail,
                 "place --exact: %d slots x %d ranks is too "
                 "large for the joint model (at most 256); use --solver ilp",
                 E + o->replicas, R);
    double wr, wn;
    moe_place_pair_weights(o, &wr, &wn);
    double deadline = moe_now() + o->time_limit;
    double *shares = moe_calloc((size_t)L * E * R, sizeof(double));
    double *u = malloc(sizeof(double) * W * E), *pc = malloc(sizeof(double) * E * E);
    int *counts = malloc(sizeof(int) * E);
    int *ia = NULL, *ja = NULL;
    double *ar = NULL;
    MOE_CHECK_ALLOC(shares, done);
    if (!u || !pc || !counts) MOE_FAIL(MOE_STATUS_NO_MEMORY, done, "place --exact: out of memory");
    double gap_max = 0;
    int proven = 0;
    for (int l = 0; l < L; l++) {
        for (int i = 0; i < W; i++)
            for (int e = 0; e < E; e++) u[(size_t)i * E + e] = moe_place_norm_load(w[i], l, e, R);
        memset(pc, 0, sizeof(double) * E * E);
        for (int i = 0; i < W; i++) {
            if (!w[i]->coact) continue;
            double pairs = 0;
            for (int e = 0; e < E; e++) pairs += w[i]->loads[(size_t)l * E + e];
            if (pairs <= 0) continue;
            for (size_t q = 0; q < (size_t)E * E; q++)
                pc[q] += w[i]->coact[(size_t)l * E * E + q] / pairs / W;
        }
        moe_place_replica_counts(w, n, l, o->replicas, R, counts);
        /* pair terms */
        int nt = 0;
        for (int a = 0; a < E; a++)
            for (int b = a + 1; b < E; b++) {
                if (pc[(size_t)a * E + b] <= 0) continue;
                nt += wn > 0 ? R * G : (wr > 0 ? R : 0);
            }
        int ncols = E * R + 1 + nt, col_z = E * R + 1, col_t = col_z + 1;
        int nrows = E + R + W * R + 2 * nt;
        size_t nnz = (size_t)E * R * 2 + (size_t)W * R * (E + 1) + (size_t)4 * nt + 1;
        free(ia);
        free(ja);
        free(ar);
        ia = malloc(sizeof(int) * (nnz + 1));
        ja = malloc(sizeof(int) * (nnz + 1));
        ar = malloc(sizeof(double) * (nnz + 1));
        if (!ia || !ja || !ar) MOE_FAIL(MOE_STATUS_NO_MEMORY, done, "place --exact: out of memory");
        glp_prob *P = glp_create_prob();
        glp_set_obj_dir(P, GLP_MIN);
        glp_add_cols(P, ncols);
        for (int j = 1; j <= E * R; j++) glp_set_col_kind(P, j, GLP_BV);
        glp_set_col_bnds(P, col_z, GLP_LO, 0, 0);
        glp_set_obj_coef(P, col_z, 1);
        glp_set_obj_coef(P, 0, wr + wn);
        glp_add_rows(P, nrows);
        size_t k = 0;
        int row = 1, col = col_t;
        for (int e = 0; e < E; e++, row++) {
            glp_set_row_bnds(P, row, GLP_FX, counts[e], counts[e]);
            for (int r = 0; r < R; r++) ia[++k] = row, ja[k] = 1 + e * R + r, ar[k] = 1;
        }
        for (int r = 0; r < R; r++, row++) {
            glp_set_row_bnds(P, row, GLP_UP, 0, lay.rank_cap);
            for (int e = 0; e < E; e++) ia[++k] = row, ja[k] = 1 + e * R + r, ar[k] = 1;
        }
        for (int i = 0; i < W; i++)
            for (int r = 0; r < R; r++, row++) {
                glp_set_row_bnds(P, row, GLP_UP, 0, 0);
                for (int e = 0; e < E; e++)
                    if (u[(size_t)i * E + e] != 0)
                        ia[++k] = row, ja[k] = 1 + e * R + r,
                        ar[k] = u[(size_t)i * E + e] / counts[e];
                ia[++k] = row, ja[k] = col_z, ar[k] = -1;
            }
        for (int a = 0; a < E; a++)
            for (int b = a + 1; b < E; b++) {
                double c = pc[(size_t)a * E + b];
                if (c <= 0 || (wr <= 0 && wn <= 0)) continue;
                for (int r = 0; r < R; r++) {
                    int n0 = r / G * G;
                    for (int r2 = (wn > 0 ? n0 : r); r2 < (wn > 0 ? n0 + G : r + 1); r2++) {
                        double coef = (wn + (r2 == r ? wr : 0)) * c / (counts[a] * counts[b]);
                        glp_set_col_bnds(P, col, GLP_DB, 0, 1);
                        glp_set_obj_coef(P, col, -coef);
                        glp_set_row_bnds(P, row, GLP_UP, 0, 0);
                        ia[++k] = row, ja[k] = col, ar[k] = 1;
                        ia[++k] = row, ja[k] = 1 + a * R + r, ar[k] = -1;
                        row++;
                        glp_set_row_bnds(P, row, GLP_UP, 0, 0);
                        ia[++k] = row, ja[k] = col, ar[k] = 1;
                        ia[++k] = row, ja[k] = 1 + b * R + r2, ar[k] = -1;
                        row++;
                        col++;
                    }
                }
            }
        glp_load_matrix(P, (int)k, ia, ja, ar);
        glp_iocp iocp;
        glp_init_iocp(&iocp);
        iocp.msg_lev = GLP_MSG_OFF;
        iocp.presolve = GLP_ON;
        iocp.mip_gap = 0;
        double left = deadline - moe_now();
        iocp.tm_lim = (int)fmax(100, left / (L - l) * 1000);
        int rc = glp_intopt(P, &iocp);
        int ms = glp_mip_status(P);
        if (ms != GLP_OPT && ms != GLP_FEAS) {
            glp_delete_prob(P);
            MOE_FAIL(MOE_STATUS_SOLVER_ERROR, done,
                     "place --exact: layer %d: GLPK found no "
                     "solution (glp_intopt %d, status %d); raise --time-limit or use --solver ilp",
                     l, rc, ms);
        }
        if (ms == GLP_OPT && rc == 0) {
            proven++;
        } else {
            double best = glp_mip_obj_val(P);
            moe_warn("place --exact: layer %d not proven optimal within the time limit", l);
            gap_max = fmax(gap_max, 1.0); /* unknown bound: report as unproven */
            (void)best;
        }
        for (int e = 0; e < E; e++)
            for (int r = 0; r < R; r++)
                if (glp_mip_col_val(P, 1 + e * R + r) > 0.5)
                    shares[((size_t)l * E + e) * R + r] = 1.0 / counts[e];
        glp_delete_prob(P);
    }
    MOE_CHECK(moe_place_plan_from_shares(L, E, R, G, shares, out), done);
    if (rep) {
        rep->mip_gap = gap_max;
        rep->subproblems = L;
        rep->subproblems_proven = proven;
    }
done:
    free(ar);
    free(ja);
    free(ia);
    free(counts);
    free(pc);
    free(u);
    moe_free(shares);
fail:
    return status;
}
