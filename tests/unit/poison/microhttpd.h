/* On the include path first when the core modules (mux, reqtable, session) are
 * compiled for their unit tests: they must not need this library (issue 15). */
#error "the core modules must compile without microhttpd.h"
