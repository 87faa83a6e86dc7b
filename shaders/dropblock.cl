__kernel void db_placeholder(__global uint *x) { x[0] = 0; }
