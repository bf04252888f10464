#pragma once

/// Everything in trainloop with one include.

#include "trainloop/callback.h"
#include "trainloop/callbacks/progress.h"
#include "trainloop/data/batch.h"
#include "trainloop/data/epochs.h"
#include "trainloop/data/idx.h"
#include "trainloop/data/tensor_dataset.h"
#include "trainloop/error.h"
#include "trainloop/event.h"
#include "trainloop/loop_state.h"
#include "trainloop/losses.h"
#include "trainloop/metrics.h"
#include "trainloop/model.h"
#include "trainloop/training_loop.h"
