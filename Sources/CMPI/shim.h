// Open MPI's C API for Swift. MPI's handles (MPI_COMM_WORLD, MPI_BYTE, …) are macros over
// addresses of library globals, which Swift cannot import; these inline functions return them.
#ifndef SUBQ_CMPI_SHIM_H
#define SUBQ_CMPI_SHIM_H
#include <mpi.h>

static inline MPI_Comm subq_mpi_comm_world(void) { return MPI_COMM_WORLD; }
static inline MPI_Comm subq_mpi_comm_null(void) { return MPI_COMM_NULL; }
static inline MPI_Datatype subq_mpi_byte(void) { return MPI_BYTE; }
static inline MPI_Info subq_mpi_info_null(void) { return MPI_INFO_NULL; }
static inline MPI_Request subq_mpi_request_null(void) { return MPI_REQUEST_NULL; }
static inline MPI_Status *subq_mpi_statuses_ignore(void) { return MPI_STATUSES_IGNORE; }
static inline int subq_mpi_comm_type_shared(void) { return MPI_COMM_TYPE_SHARED; }
static inline int subq_mpi_thread_funneled(void) { return MPI_THREAD_FUNNELED; }
static inline int subq_mpi_success(void) { return MPI_SUCCESS; }
static inline int subq_mpi_max_processor_name(void) { return MPI_MAX_PROCESSOR_NAME; }

#endif
