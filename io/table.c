/* table: the one printer of moerun's tables for people (place's figures, the run's stages, the
 * elastic events, the dry run): columns of a fixed width, strings left-aligned (too long: their end
 * kept, where paths differ), numbers right-aligned, one space between columns. */
#include <math.h>
#include <stdarg.h>
#include <string.h>

#include "io/io.h"

void moe_table_header(const moe_table_t *t)
{
    fputs(t->indent ? t->indent : "", t->out);
    for (int c = 0; c < t->n; c++) {
        const moe_table_column_t *col = &t->columns[c];
        fprintf(t->out, col->kind == 's' ? "%s%-*s" : "%s%*s", c ? " " : "", col->width, col->title);
    }
    fputc('\n', t->out);
}

void moe_table_row(const moe_table_t *t, ...)
{
    va_list ap;
    va_start(ap, t);
    fputs(t->indent ? t->indent : "", t->out);
    for (int c = 0; c < t->n; c++) {
        const moe_table_column_t *col = &t->columns[c];
        const char *sep = c ? " " : "";
        if (col->kind == 's') {
            const char *s = va_arg(ap, const char *);
            size_t n = strlen(s);
            if (col->width > 0 && n > (size_t)col->width) s += n - (size_t)col->width;
            fprintf(t->out, "%s%-*s", sep, col->width, s);
        } else if (col->kind == 'i') {
            fprintf(t->out, "%s%*lld", sep, col->width, va_arg(ap, long long));
        } else {
            const double v = va_arg(ap, double);
            if (isfinite(v))
                fprintf(t->out, "%s%*.*f", sep, col->width, col->precision, v);
            else /* a figure that is not known (as JSON's null) */
                fprintf(t->out, "%s%*s", sep, col->width, "-");
        }
    }
    va_end(ap);
    fputc('\n', t->out);
}
