#include <stdio.h>

int main(void) {
    puts("Hello from a multi-stage build by Stagecoach!");
    return 0;
}
