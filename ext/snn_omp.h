/* What the compiled code knows about OpenMP, decided by the C preprocessor: _OPENMP is
   defined exactly when the compiler was given its OpenMP flag (-fopenmp, or Apple clang's
   -Xpreprocessor -fopenmp), so this cannot disagree with how the kernels were compiled. */
#ifndef SNN_OMP_H
#define SNN_OMP_H
#include <limits.h>
#ifdef _OPENMP
#include <omp.h>
static int snn_openmp_enabled(void) { return 1; }
static int snn_omp_max_threads(void) { return omp_get_max_threads(); }
static int snn_omp_thread_limit(void) { return omp_get_thread_limit(); }
#else
static int snn_openmp_enabled(void) { return 0; }
static int snn_omp_max_threads(void) { return 1; }
static int snn_omp_thread_limit(void) { return INT_MAX; }
#endif
#endif /* SNN_OMP_H */
