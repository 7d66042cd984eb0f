# The float types every kernel is specialized for. Defined once, cimported everywhere.
ctypedef fused floating_t:
    float
    double

ctypedef unsigned char uchar

# Compact within-window argmax kept by max-pooling layers for backward.
ctypedef fused tap_t:
    uchar
    int
