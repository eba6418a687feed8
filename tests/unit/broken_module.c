/* A shared object named like a backend module that lacks the init symbol. */
int hops_not_a_backend(void) { return 0; }
